//! The `test` verb: installs what the tests use (as root, from Debian), then runs the
//! workspace's tests with cargo.

use crate::host;

/// Runs `cargo test --workspace ARGS`; its exit code.
pub fn test(cargo_args: &[String]) -> i32 {
    if let Err(e) = host::packages::ensure_for_tests() {
        eprintln!("kstorm: error: {e:#}");
        return 2;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut argv = vec!["test".to_string(), "--workspace".to_string()];
    argv.extend(cargo_args.iter().cloned());
    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    host::echo(&cargo.to_string_lossy(), &argv);
    match std::process::Command::new(&cargo)
        .args(&argv)
        .current_dir(host::workspace_root())
        .status()
    {
        Ok(st) => st.code().unwrap_or(2),
        Err(e) => {
            eprintln!("kstorm: error: starting cargo: {e}");
            2
        }
    }
}
