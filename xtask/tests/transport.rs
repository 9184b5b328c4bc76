//! The transports against the real disk image (Debian's kernel, busybox, dropbear) under
//! QEMU: the same suite over ssh and over the serial shell, and each fault the transports
//! must report distinctly. No QEMU may outlive a test (checked by `run_suite`).

mod common;

use common::*;
use kstorm::cell::FrameChannel;
use kstorm::config::Image;
use kstorm::detect::Kind;
use kstorm::error::InfraCause;
use kstorm::transport::Faults;
use kstorm::verdict::Verdict;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `images/linux-disk.yaml` renamed to `name`, with only `transport` (YAML) offered.
fn disk_image(dir: &std::path::Path, name: &str, transport: &str) -> Image {
    let text =
        std::fs::read_to_string(kstorm::host::workspace_root().join("images/linux-disk.yaml"))
            .unwrap();
    let head = text.split("\ntransport:").next().unwrap();
    let tail = text.split("\ndeadlines:").nth(1).unwrap();
    let yaml = format!(
        "{}\ntransport: {transport}\ndeadlines:{tail}",
        head.replace("name: linux-disk", &format!("name: {name}"))
    );
    inline_image(dir, name, &yaml)
}

fn suite(image: &str, case: &str, extra: &str) -> String {
    format!(
        "name: inline\ndescription: transport test\nimages: [{image}]\nram: [256M]\n{extra}\ncases:\n  - {case}\n"
    )
}

const SSH: &str = "{ssh: {user: root, password: kstorm}}";
const SERIAL: &str = "{serial-shell: {user: root, password: kstorm}}";

#[test]
fn same_suite_passes_over_ssh_and_serial_with_the_same_shape() {
    let dir = tempfile::tempdir().unwrap();
    let images = vec![
        disk_image(dir.path(), "disk-ssh", SSH),
        disk_image(dir.path(), "disk-serial", SERIAL),
    ];
    let yaml = "name: inline\ndescription: smoke over both transports\nimages: [disk-ssh, disk-serial]\nram: [256M]\ncases:\n  - {name: smoke, scenario: smoke, expect: pass}\n";
    let (records, _d) = run_suite_with(yaml, images, |o| o.session.jobs = 2);
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(
            r.verdict,
            Verdict::Pass,
            "{}: {}",
            r.id,
            r.verdict.describe()
        );
        assert_eq!(r.results.len(), 1);
        assert_eq!(r.results[0].scenario, "smoke");
        assert!(r.hello.as_ref().unwrap()["kernel"]
            .as_str()
            .unwrap()
            .ends_with("-amd64"));
        assert_eq!(
            r.frames.missing + r.frames.bad_checksum,
            0,
            "{:?}",
            r.frames
        );
        let t = r.transport.as_ref().expect("transport stats");
        assert!(t.connect_s.unwrap() > 0.0);
        assert!(t.uploaded_bytes > 100_000, "{t:?}");
        // The base image is never written: each cell booted its own overlay.
        assert!(r.provenance.extra.contains_key("disk.hash"));
    }
    let channels: Vec<_> = records.iter().map(|r| r.frames.channel.unwrap()).collect();
    assert_eq!(channels, vec![FrameChannel::Serial, FrameChannel::Ssh]);
    // Same shape as the PID-1 path: the same record fields, the transport's stats added.
    let a = serde_json::to_value(&records[0]).unwrap();
    let b = serde_json::to_value(&records[1]).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&a), keys(&b));
}

#[test]
fn sshd_killed_mid_run_is_lost_connection_not_crash() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk_image(dir.path(), "disk-ssh", SSH);
    let (records, _d) = run_suite_with(
        &suite(
            "disk-ssh",
            "{name: hang, scenario: hang, expect: hang}",
            "deadlines: {heartbeat: 60s, cell: 180s}",
        ),
        vec![image],
        |o| {
            o.session.faults = Faults {
                ssh_on_start: Some("killall dropbear".into()),
                ..Default::default()
            }
        },
    );
    let r = only(records);
    match &r.verdict {
        Verdict::Infra { cause, reason } => {
            assert_eq!(*cause, InfraCause::Transport);
            assert!(reason.contains("lost connection"), "{reason}");
            assert!(reason.contains("kernel alive"), "{reason}");
        }
        v => panic!("expected infra/lost connection, got {}", v.describe()),
    }
    assert!(r.reports.iter().all(|rep| !rep.event.crash));
}

#[test]
fn kernel_panic_mid_command_over_ssh_is_a_crash_with_its_title() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk_image(dir.path(), "disk-ssh", SSH);
    let (records, _d) = run_suite(
        &suite(
            "disk-ssh",
            "{name: panic, scenario: panic, expect: crash, expect_title: sysrq triggered crash}",
            "",
        ),
        vec![image],
    );
    let r = only(records);
    match &r.verdict {
        Verdict::Crash { kind, title } => {
            assert_eq!(*kind, Kind::Panic);
            assert!(title.contains("sysrq triggered crash"), "{title}");
        }
        v => panic!("expected a crash, got {}", v.describe()),
    }
    assert!(r.as_expected);
}

#[test]
fn wrong_password_is_infra_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let images = vec![
        disk_image(
            dir.path(),
            "disk-ssh-badpw",
            "{ssh: {user: root, password: not-the-password}}",
        ),
        disk_image(
            dir.path(),
            "disk-serial-badpw",
            "{serial-shell: {user: root, password: not-the-password}}",
        ),
    ];
    let yaml = "name: inline\ndescription: wrong password\nimages: [disk-ssh-badpw, disk-serial-badpw]\nram: [256M]\ncases:\n  - {name: smoke, scenario: smoke, expect: pass}\n";
    let (records, _d) = run_suite_with(yaml, images, |o| o.session.jobs = 2);
    for r in &records {
        match &r.verdict {
            Verdict::Infra { cause, reason } => {
                assert_eq!(*cause, InfraCause::Transport);
                assert!(reason.contains("guest refused"), "{reason}");
                if r.image.contains("ssh") {
                    assert!(
                        reason.contains("authentication failed for root"),
                        "{reason}"
                    );
                } else {
                    assert!(reason.contains("Login incorrect"), "{reason}");
                }
            }
            v => panic!("{}: expected infra, got {}", r.id, v.describe()),
        }
    }
}

#[test]
fn serial_line_dropping_bytes_is_retried_never_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk_image(dir.path(), "disk-serial", SERIAL);
    let (records, _d) = run_suite_with(
        &suite(
            "disk-serial",
            "{name: smoke, scenario: smoke, expect: pass}",
            "",
        ),
        vec![image],
        |o| {
            o.session.faults = Faults {
                // One byte in 1499 lost after login: most answers survive, some do not.
                serial_drop_every: Some(1499),
                ..Default::default()
            }
        },
    );
    let r = only(records);
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.verdict.describe());
    let t = r.transport.as_ref().unwrap();
    assert!(t.retries + t.requeries > 0, "no damage was noticed: {t:?}");
    // Every frame arrived intact in the end (damaged live lines were read back whole).
    assert_eq!(r.frames.missing, 0, "{:?}", r.frames);
    assert!(
        r.frames.duplicate > 0,
        "the results file was read back: {:?}",
        r.frames
    );
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].scenario, "smoke");
}

/// Connections a listener on 127.0.0.1 accepts until `stop` (at most two minutes).
fn count_connections(listener: std::net::TcpListener, stop: Arc<AtomicBool>) -> usize {
    listener.set_nonblocking(true).unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
        match listener.accept() {
            Ok(_) => n += 1,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    n
}

/// The guest, reached over ssh, tries to open a TCP connection to a host port that is not
/// forwarded (the host is 10.0.2.2 on QEMU's user network). With `restrict=on` nothing gets
/// through; the control run without it shows the test would see the connection.
fn guest_connections_to_unforwarded_port(restrict: bool) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let image = disk_image(dir.path(), "disk-ssh", SSH);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_counting = stop.clone();
    let counter = std::thread::spawn(move || count_connections(listener, stop_counting));
    let probe =
        format!("for i in 1 2 3 4 5; do echo probe | nc -w 1 10.0.2.2 {port}; sleep 0.5; done");
    let (records, _d) = run_suite_with(
        &suite(
            "disk-ssh",
            "{name: hang, scenario: hang, expect: hang}",
            "deadlines: {heartbeat: 10s, cell: 120s}",
        ),
        vec![image],
        |o| {
            o.session.faults = Faults {
                ssh_on_start: Some(probe),
                unrestricted_net: !restrict,
                ..Default::default()
            }
        },
    );
    stop.store(true, Ordering::SeqCst);
    let r = only(records);
    assert_eq!(r.verdict.word(), "hang", "{}", r.verdict.describe());
    counter.join().unwrap()
}

#[test]
fn a_guest_reaches_no_host_port_but_the_forwarded_one() {
    assert_eq!(guest_connections_to_unforwarded_port(true), 0);
    assert!(
        guest_connections_to_unforwarded_port(false) > 0,
        "the control saw no connection: the probe itself is broken"
    );
}
