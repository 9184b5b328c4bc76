//! Table-driven detector tests: every file under `tests/fixtures/detect/<os>/` is one case.
//!
//! A fixture is a header, a blank line, then the raw console log. Header keys:
//! - `crash: no` for logs that must produce no crash, or `kind:` and `title:` of the first crash;
//! - `line:` (optional) the 1-based log line of the first crash (counted in the log, after the header);
//! - `event:` (repeatable) `<kind> <title>` of a non-crash event that must be reported (OOM kills);
//! - `events: none` when the log must produce no event at all;
//! - `secondary:` (repeatable) `<kind> <title>` of a later crash that must be reported;
//! - `alt:` (repeatable) an alternative title the first crash must carry;
//! - `corrupted:` `yes` or `no`, whether the first crash is marked damaged;
//! - `source:` where the log comes from (free text, required so real and hand-made logs are told apart).

use kstorm::detect::{Detector, Event, Kind, Os, Summary};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

/// Fixture counts per OS: a fixture that fails to load or is deleted must fail a test.
const EXPECTED_COUNTS: [(Os, usize); 6] = [
    (Os::Linux, 90),
    (Os::Freebsd, 19),
    (Os::Openbsd, 9),
    (Os::Netbsd, 8),
    (Os::Mach, 20),
    (Os::Hurd, 12),
];

struct Fixture {
    path: PathBuf,
    os: Os,
    crash: Option<(String, String)>,
    line: Option<u64>,
    events: Vec<(String, String)>,
    no_events: bool,
    secondary: Vec<(String, String)>,
    alt: Vec<String>,
    corrupted: Option<bool>,
    log: Vec<u8>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/detect")
}

fn kind_and_title(value: &str, path: &Path) -> (String, String) {
    let (k, t) = value.split_once(' ').unwrap_or_else(|| {
        panic!(
            "{}: expected '<kind> <title>', got '{value}'",
            path.display()
        )
    });
    (k.to_string(), t.trim().to_string())
}

fn load(os: Os) -> Vec<Fixture> {
    let dir = fixtures_dir().join(os.as_str());
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    paths.sort();
    paths.into_iter().map(|p| parse(os, p)).collect()
}

fn parse(os: Os, path: PathBuf) -> Fixture {
    let bytes = std::fs::read(&path).unwrap();
    let split = bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or_else(|| panic!("{}: no blank line after the header", path.display()));
    let header = String::from_utf8(bytes[..split].to_vec()).expect("header is UTF-8");
    let log = bytes[split + 2..].to_vec();
    let (mut kind, mut title, mut no_crash, mut source) = (None, None, false, false);
    let mut f = Fixture {
        path: path.clone(),
        os,
        crash: None,
        line: None,
        events: vec![],
        no_events: false,
        secondary: vec![],
        alt: vec![],
        corrupted: None,
        log,
    };
    for line in header.lines() {
        let (key, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{}: bad header line '{line}'", path.display()));
        let value = value.trim();
        match key.trim() {
            "kind" => kind = Some(value.to_string()),
            "title" => title = Some(value.to_string()),
            "crash" => {
                assert_eq!(value, "no", "{}: 'crash:' takes only 'no'", path.display());
                no_crash = true
            }
            "line" => f.line = Some(value.parse().expect("line is a number")),
            "event" => f.events.push(kind_and_title(value, &path)),
            "events" => {
                assert_eq!(
                    value,
                    "none",
                    "{}: 'events:' takes only 'none'",
                    path.display()
                );
                f.no_events = true
            }
            "secondary" => f.secondary.push(kind_and_title(value, &path)),
            "alt" => f.alt.push(value.to_string()),
            "corrupted" => {
                f.corrupted = Some(match value {
                    "yes" => true,
                    "no" => false,
                    _ => panic!("{}: 'corrupted:' takes 'yes' or 'no'", path.display()),
                })
            }
            "source" => source = true,
            other => panic!("{}: unknown header key '{other}'", path.display()),
        }
    }
    assert!(source, "{}: header needs 'source:'", path.display());
    match (kind, title, no_crash) {
        (Some(k), Some(t), false) => f.crash = Some((k, t)),
        (None, None, true) => {}
        _ => panic!(
            "{}: header needs either 'kind:' and 'title:', or 'crash: no'",
            path.display()
        ),
    }
    f
}

fn run(os: Os, log: &[u8], chunk: Option<usize>) -> (Vec<Event>, Summary) {
    let mut d = Detector::new(os).unwrap();
    let mut live = Vec::new();
    match chunk {
        None => live.extend(d.feed(log)),
        Some(n) => {
            for piece in log.chunks(n) {
                live.extend(d.feed(piece));
            }
        }
    }
    (live, Summary::of(&d.finish()))
}

fn check(f: &Fixture) -> Result<(), String> {
    let (live, summary) = run(f.os, &f.log, None);
    let name = f.path.display();
    let describe = |s: &Summary| {
        s.events
            .iter()
            .map(|e| format!("\n    {} {} (line {})", e.kind, e.title, e.line))
            .collect::<String>()
    };
    match (&f.crash, &summary.crash) {
        (None, None) => {}
        (None, Some(c)) => {
            return Err(format!(
                "{name}: expected no crash, got {} '{}' at line {}",
                c.kind, c.title, c.line
            ))
        }
        (Some((k, t)), None) => {
            return Err(format!(
                "{name}: expected {k} '{t}', got no crash; events:{}",
                describe(&summary)
            ))
        }
        (Some((k, t)), Some(c)) => {
            if c.kind.as_str() != k || &c.title != t {
                return Err(format!(
                    "{name}: expected {k} '{t}', got {} '{}'; events:{}",
                    c.kind,
                    c.title,
                    describe(&summary)
                ));
            }
            if let Some(missing) = f.alt.iter().find(|a| !c.alt_titles.contains(a)) {
                return Err(format!(
                    "{name}: expected the alternative title '{missing}', got {:?}",
                    c.alt_titles
                ));
            }
            if f.corrupted.is_some_and(|want| want != c.corrupted) {
                return Err(format!(
                    "{name}: expected corrupted: {:?}, got {}",
                    f.corrupted, c.corrupted
                ));
            }
            if let Some(line) = f.line {
                if c.line != line {
                    return Err(format!(
                        "{name}: expected the crash at line {line}, got line {}",
                        c.line
                    ));
                }
            }
        }
    }
    for (k, t) in &f.events {
        if !summary
            .events
            .iter()
            .any(|e| !e.crash && e.kind.as_str() == k && &e.title == t)
        {
            return Err(format!(
                "{name}: missing event {k} '{t}'; events:{}",
                describe(&summary)
            ));
        }
    }
    if f.no_events && !summary.events.is_empty() {
        return Err(format!(
            "{name}: expected no events; got:{}",
            describe(&summary)
        ));
    }
    for (k, t) in &f.secondary {
        if !summary
            .secondary
            .iter()
            .any(|e| e.kind.as_str() == k && &e.title == t)
        {
            return Err(format!(
                "{name}: missing secondary {k} '{t}'; events:{}",
                describe(&summary)
            ));
        }
    }
    // The live events and the final reports describe the same reports, in order.
    let live_keys: Vec<_> = live.iter().map(|e| (e.kind, e.line, e.crash)).collect();
    let final_keys: Vec<_> = summary
        .events
        .iter()
        .map(|e| (e.kind, e.line, e.crash))
        .collect();
    if live_keys != final_keys {
        return Err(format!(
            "{name}: live events {live_keys:?} differ from reports {final_keys:?}"
        ));
    }
    // Feeding in small pieces gives the same result.
    for chunk in [1, 7, 4096] {
        let (live_chunked, chunked) = run(f.os, &f.log, Some(chunk));
        if chunked != summary || live_chunked != live {
            return Err(format!(
                "{name}: feeding in {chunk}-byte pieces changes the result"
            ));
        }
    }
    Ok(())
}

/// Every fixture of every OS; the failures of all of them in one message.
#[test]
fn fixtures_of_every_os() {
    let mut failures = Vec::new();
    for os in Os::ALL {
        let fixtures = load(os);
        let failed: Vec<String> = fixtures.iter().filter_map(|f| check(f).err()).collect();
        if !failed.is_empty() {
            failures.push(format!(
                "{} of {} {} fixtures failed:\n{}",
                failed.len(),
                fixtures.len(),
                os.as_str(),
                failed.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fixture_counts_per_os() {
    for (os, expected) in EXPECTED_COUNTS {
        let n = load(os).len();
        assert_eq!(
            n,
            expected,
            "{} fixtures: found {n}, expected {expected} (update EXPECTED_COUNTS when adding)",
            os.as_str()
        );
    }
}

#[test]
fn every_os_has_positive_and_negative_fixtures() {
    for (os, _) in EXPECTED_COUNTS {
        let fixtures = load(os);
        assert!(
            fixtures.iter().any(|f| f.crash.is_some()),
            "{}: no crash fixture",
            os.as_str()
        );
        assert!(
            fixtures.iter().any(|f| f.crash.is_none()),
            "{}: no clean fixture",
            os.as_str()
        );
    }
}

#[test]
fn timing_kinds_never_come_from_text() {
    for (os, _) in EXPECTED_COUNTS {
        for f in load(os) {
            let (_, s) = run(os, &f.log, None);
            for e in &s.events {
                assert!(
                    !matches!(
                        e.kind,
                        Kind::NoOutput | Kind::NoProgress | Kind::LostConnection
                    ),
                    "{}: timing kind from text",
                    f.path.display()
                );
            }
        }
    }
}

/// All fixture logs of all OSes, for the property tests.
fn all_logs() -> Vec<(Os, Vec<u8>)> {
    EXPECTED_COUNTS
        .iter()
        .flat_map(|(os, _)| load(*os).into_iter().map(move |f| (*os, f.log)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary chunking of a real log gives the same events and reports as feeding it whole.
    #[test]
    fn chunking_never_changes_the_result(which in any::<prop::sample::Index>(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40)) {
        let logs = all_logs();
        let (os, log) = &logs[which.index(logs.len())];
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(log.len() + 1)).collect();
        points.sort_unstable();
        let mut d = Detector::new(*os).unwrap();
        let mut live = Vec::new();
        let mut at = 0;
        for p in points.into_iter().chain(std::iter::once(log.len())) {
            live.extend(d.feed(&log[at..p]));
            at = p;
        }
        let chunked = d.finish();
        let mut whole = Detector::new(*os).unwrap();
        let live_whole = whole.feed(log);
        prop_assert_eq!(live, live_whole);
        prop_assert_eq!(chunked, whole.finish());
    }

    /// Arbitrary bytes (with crash-like fragments mixed in) never make the engine panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        os in prop::sample::select(Os::ALL.to_vec()),
        pieces in prop::collection::vec(prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            prop::sample::select(vec![
                b"Kernel panic - not syncing: ".to_vec(), b"BUG: KASAN: ".to_vec(), b"RIP: 0010:".to_vec(),
                b"\n".to_vec(), b"\r\n".to_vec(), b"\x1b[31m".to_vec(), b"panic: ".to_vec(), b"db> ".to_vec(),
                b"Call Trace:\n".to_vec(), b"Oops: 0000 [#1]".to_vec(), b"oom-kill:task=".to_vec(), b"\0\0".to_vec(),
                b"WARNING: CPU: 0 PID: 1 at ".to_vec(), b"Fatal trap 12: ".to_vec(), b"panic ../x.c:1: ".to_vec(),
                vec![b'x'; 5000], b"KSTORM1 ".to_vec(), b"\xff\xfe".to_vec(), b"{".to_vec(), b"+0x1/0x2".to_vec(),
            ]),
        ], 0..60),
    ) {
        let mut d = Detector::new(os).unwrap();
        for p in &pieces {
            d.feed(p);
        }
        let reports = d.finish();
        for r in &reports {
            prop_assert!(r.lines.iter().all(|l| l.len() <= 4 * 4096));
        }
    }
}

/// A signature file that adds a kind of its own, arms a signature and picks frames by anchors.
const CUSTOM: &str = r#"
os: linux
trace: {max_lines: 20}
kinds:
  - name: widget-jam
    about: the widget driver stopped turning
frames:
  start: ['^Call Trace:']
  frame: '^\s*(?P<func>[a-z_0-9]+)\+0x[0-9a-f]+/0x[0-9a-f]+'
  skip: ['^helper_']
stacks:
  stall:
    anchors: ['^do_syscall_64$']
    prefer: ['^rtnl_lock$']
signatures:
  - name: jam
    kind: widget-jam
    literal: 'widget jammed'
    start: 'widget jammed'
    stack: stall
    title: ['widget jam in {frame}', 'widget jam']
  - name: banner
    kind: panic
    literal: 'Widget OS '
    start: '^Widget OS \d'
    armed_by: ['Widget OS ']
    max_lines: 1
    title: 'second banner'
"#;

fn custom_run(log: &str) -> Vec<kstorm::detect::CrashReport> {
    let sigs = kstorm::detect::Signatures::parse("custom.yaml", CUSTOM).unwrap();
    let mut d = Detector::with_signatures(std::sync::Arc::new(sigs));
    d.feed(log.as_bytes());
    d.finish()
}

#[test]
fn a_signature_file_adds_a_kind_with_no_rust_change() {
    let reports = custom_run(
        "widget jammed\nCall Trace:\n helper_spin+0x1/0x2\n jam_loop+0x1/0x2\n widget_ioctl+0x1/0x2\n do_syscall_64+0x1/0x2\n",
    );
    let e = &reports[0].event;
    assert_eq!(e.kind, Kind::named("widget-jam").unwrap());
    assert_eq!(e.kind.as_str(), "widget-jam");
    // The caller of the anchor, past the skipped helper.
    assert_eq!(e.title, "widget jam in widget_ioctl");
    let json = serde_json::to_value(e).unwrap();
    assert_eq!(json["kind"], "widget-jam");
    // A preferred frame wins over the anchor rule.
    let reports = custom_run(
        "widget jammed\nCall Trace:\n jam_loop+0x1/0x2\n rtnl_lock+0x1/0x2\n do_syscall_64+0x1/0x2\n",
    );
    assert_eq!(reports[0].event.title, "widget jam in rtnl_lock");
}

#[test]
fn an_armed_signature_fires_only_after_its_literal_was_seen() {
    let once = custom_run("Widget OS 1.0 booting\nok\n");
    assert!(once.is_empty(), "the first banner is a boot, not a crash");
    let twice = custom_run("Widget OS 1.0 booting\nok\nWidget OS 1.0 booting\n");
    assert_eq!(twice.len(), 1);
    assert_eq!(twice[0].event.line, 3);
}

#[test]
fn kinds_are_validated_with_file_and_line() {
    let undeclared = CUSTOM.replace("kind: widget-jam", "kind: widget-jamm");
    let err = kstorm::detect::Signatures::parse("custom.yaml", &undeclared)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("custom.yaml:") && err.contains("widget-jamm"),
        "{err}"
    );
    let bad_name = CUSTOM.replace("name: widget-jam\n", "name: Widget Jam\n");
    let err = kstorm::detect::Signatures::parse("custom.yaml", &bad_name)
        .unwrap_err()
        .to_string();
    assert!(err.contains("kinds.name"), "{err}");
    let timing = CUSTOM.replace("kind: panic", "kind: no-output");
    let err = kstorm::detect::Signatures::parse("custom.yaml", &timing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("timing kinds"), "{err}");
    let unknown_stack = CUSTOM.replace("stack: stall", "stack: stalls");
    let err = kstorm::detect::Signatures::parse("custom.yaml", &unknown_stack)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no stack rules named 'stalls'"), "{err}");
}

/// The first crash of a fixture (its log), as the detector reports it.
fn first_crash(os: Os, file: &str) -> Event {
    let f = parse(os, fixtures_dir().join(os.as_str()).join(file));
    run(os, &f.log, None).1.crash.expect("the fixture crashes")
}

#[test]
fn one_bug_under_two_titles_is_the_same_crash_and_damage_is_marked() {
    use kstorm::detect::title::{same_crash, CrashTitles};
    // A KASAN report and a GPF in the same function share "bad-access in ...".
    let kasan = first_crash(Os::Linux, "kasan-memcpy-caller.log");
    let mut gpf = kasan.clone();
    gpf.title = "general protection fault in hci_event_packet".into();
    gpf.alt_titles = vec!["bad-access in hci_event_packet".into()];
    assert!(same_crash(
        CrashTitles::from(&kasan),
        CrashTitles::from(&gpf)
    ));
    let other = first_crash(Os::Linux, "hung-task-rtnl.log");
    assert!(!same_crash(
        CrashTitles::from(&kasan),
        CrashTitles::from(&other)
    ));
    // A report cut before its trace: marked, titled "in corrupted", with no alternatives that
    // would join it to other damaged reports.
    let cut = first_crash(Os::Linux, "corrupted-truncated-hung-task.log");
    assert!(cut.corrupted, "{cut:?}");
    assert!(cut.title.ends_with(" in corrupted"), "{}", cut.title);
    // Old results (no alt_titles, no corrupted) still parse.
    let old: Event =
        serde_json::from_str(r#"{"kind":"panic","title":"kernel panic: x","line":3,"crash":true}"#)
            .unwrap();
    assert!(old.alt_titles.is_empty() && !old.corrupted);
}

#[test]
fn every_shipped_signature_file_loads() {
    for os in Os::ALL {
        kstorm::detect::Signatures::builtin(os).unwrap_or_else(|e| panic!("{os:?}: {e:#}"));
    }
}
