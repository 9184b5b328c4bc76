//! `cargo xtask run` on a host that lacks QEMU, run as a user who may not install it: it must
//! print the exact `apt-get install` line and exit with 2 before it builds or boots anything.
//!
//! QEMU is installed on this machine, so the test hides it: the binary runs with a PATH that
//! holds only apt's tools (links to the real ones). It runs as `nobody` through `setpriv`, and
//! once more as root with `KSTORM_NO_INSTALL=1`, the switch that makes root only report.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A folder with links to the real apt-cache, apt-get and dpkg-deb, and nothing else.
fn path_without_qemu() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for tool in ["apt-cache", "apt-get", "dpkg-deb"] {
        let real = Path::new("/usr/bin").join(tool);
        std::os::unix::fs::symlink(&real, dir.path().join(tool)).unwrap();
    }
    // `nobody` must be able to read it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

const SETPRIV: [&str; 4] = [
    "/usr/bin/setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

/// `xtask run` on the smoke cell with `path` as its PATH, as `nobody` or as this user.
fn run_xtask(as_nobody: bool, path: &Path, results: &Path, env: &[(&str, &str)]) -> Output {
    let xtask = env!("CARGO_BIN_EXE_xtask");
    let mut argv: Vec<String> = Vec::new();
    if as_nobody {
        argv.extend(SETPRIV.iter().map(|s| s.to_string()));
    }
    argv.extend([
        "/usr/bin/env".to_string(),
        format!("PATH={}", path.display()),
    ]);
    argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.push(xtask.to_string());
    argv.extend(["run", "--filter", "smoke@linux-256M", "--results"].map(String::from));
    argv.push(results.display().to_string());
    Command::new(&argv[0])
        .args(&argv[1..])
        .env("HOME", "/nonexistent")
        .env_remove("KSTORM_NO_INSTALL")
        .output()
        .unwrap()
}

fn assert_prints_the_line_and_boots_nothing(out: &Output, results: &Path, elapsed: Duration) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = stderr
        .lines()
        .map(str::trim)
        .find(|l| {
            l.starts_with("apt-get install") || l.starts_with("apt-get update && apt-get install")
        })
        .unwrap_or_else(|| panic!("no apt-get line in:\n{stderr}"));
    assert!(
        line.contains(" -y -q --no-install-recommends ") && line.contains(" qemu-system-x86"),
        "{line}"
    );
    // The linux image needs no GRUB, no disk tools.
    assert!(
        !line.contains("grub") && !line.contains("e2fsprogs"),
        "{line}"
    );
    assert!(stderr.contains("nothing was booted"), "{stderr}");
    assert!(
        !stderr.contains("$ qemu-system"),
        "QEMU was started:\n{stderr}"
    );
    assert!(
        !stderr.contains("$ cargo build"),
        "the payload was built:\n{stderr}"
    );
    assert!(!results.exists(), "a results folder was written");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
}

#[test]
fn a_user_without_qemu_gets_the_install_line_and_exit_2() {
    let path = path_without_qemu();
    let results = tempfile::tempdir().unwrap();
    let results = results.path().join("results");
    let setpriv_works = Command::new(SETPRIV[0])
        .args(&SETPRIV[1..])
        .arg("/bin/true")
        .status()
        .is_ok_and(|s| s.success());
    if setpriv_works {
        let t = Instant::now();
        let out = run_xtask(true, path.path(), &results, &[]);
        assert_prints_the_line_and_boots_nothing(&out, &results, t.elapsed());
    } else {
        eprintln!("setpriv cannot switch to nobody here: only the KSTORM_NO_INSTALL run");
    }
    let t = Instant::now();
    let out = run_xtask(false, path.path(), &results, &[("KSTORM_NO_INSTALL", "1")]);
    assert_prints_the_line_and_boots_nothing(&out, &results, t.elapsed());
}

/// The harness builds with cargo and a C compiler alone: libssh2 links a vendored OpenSSL, so
/// the binary needs no libssl from the system (and the build no libssl-dev or pkg-config).
#[test]
fn the_harness_does_not_link_the_system_openssl() {
    let ldd = kstorm::host::Cmd::new("ldd")
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .read()
        .unwrap();
    assert!(ldd.contains("libc.so"), "{ldd}");
    assert!(
        !ldd.contains("libssl") && !ldd.contains("libcrypto"),
        "the harness links the system OpenSSL:\n{ldd}"
    );
}
