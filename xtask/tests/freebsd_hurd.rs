//! FreeBSD and GNU/Hurd images without the images: downloads against a local HTTP server on
//! 127.0.0.1 serving generated files (full, resumed, a server that ignores Range or lies in
//! Content-Range, a wrong hash, no server), the recipes and the lock file, and the statistics
//! parsers on the seed's own output and on fixtures of the documented formats.

use kstorm::config::{ArchiveFormat, PublishedDisk, Source};
use kstorm::error::{InfraCause, InfraError};
use kstorm::guest::{capture, hurd, series, vmstat, StatsFormat};
use kstorm::images::download;
use kstorm::images::published::{self, LockEntry, LockFile};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How the test server answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Honours Range with 206 and a right Content-Range.
    Honest,
    /// The first answer stops after this many bytes (the connection closes), later ones are
    /// honest.
    CutFirstAt(usize),
    /// Always answers 200 with the whole file.
    IgnoresRange,
    /// Answers 206 with a Content-Range that starts elsewhere.
    WrongRange,
}

/// A server on 127.0.0.1 serving `files` (path → bytes) until dropped; counts requests and
/// records the Range headers it got. Plain sockets, so that a cut closes the connection for
/// real (the client sees the end of the stream, not a stall).
struct TestServer {
    port: u16,
    requests: Arc<AtomicUsize>,
    ranges: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(files: Vec<(&str, Vec<u8>)>, mode: Mode) -> TestServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let ranges = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let files: Vec<(String, Vec<u8>)> =
            files.into_iter().map(|(p, d)| (p.to_string(), d)).collect();
        let (n, r, halt) = (requests.clone(), ranges.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: the test drops the server within seconds; 60 s is the backstop.
            let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !halt.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                let count = n.fetch_add(1, Ordering::SeqCst);
                serve(stream, &files, mode, count, &r);
            }
        });
        TestServer {
            port,
            requests,
            ranges,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request's head; answers it; closes the connection.
fn serve(
    mut stream: std::net::TcpStream,
    files: &[(String, Vec<u8>)],
    mode: Mode,
    count: usize,
    ranges: &std::sync::Mutex<Vec<Option<String>>>,
) {
    use std::io::BufRead;
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut first = String::new();
    let _ = reader.read_line(&mut first);
    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    ranges.lock().unwrap().push(range.clone());
    let body = files.iter().find(|(p, _)| *p == path).map(|(_, d)| d);
    answer(&mut stream, body, range, mode, count);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Writes the answer by hand (raw HTTP), so a cut is a real cut of the connection.
fn answer(
    w: &mut std::net::TcpStream,
    body: Option<&Vec<u8>>,
    range: Option<String>,
    mode: Mode,
    count: usize,
) {
    let Some(body) = body else {
        let _ = w
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
        .filter(|_| mode != Mode::IgnoresRange);
    let total = body.len();
    let (status, from, content_range) = match (start, mode) {
        (Some(s), Mode::WrongRange) => {
            let lie = s / 2;
            (206, s, Some(format!("bytes {lie}-{}/{total}", total - 1)))
        }
        (Some(s), _) => (206, s, Some(format!("bytes {s}-{}/{total}", total - 1))),
        (None, _) => (200, 0, None),
    };
    let part = &body[from..];
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        if status == 206 {
            "Partial Content"
        } else {
            "OK"
        },
        part.len()
    );
    if let Some(cr) = content_range {
        head.push_str(&format!("Content-Range: {cr}\r\n"));
    }
    head.push_str("\r\n");
    let _ = w.write_all(head.as_bytes());
    let send = match mode {
        Mode::CutFirstAt(n) if count == 0 => &part[..n.min(part.len())],
        _ => part,
    };
    let _ = w.write_all(send);
    let _ = w.flush();
}

/// Deterministic bytes that are not all alike.
fn generated(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn sha512(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha512::digest(data))
}

fn infra_cause(e: &anyhow::Error) -> Option<InfraCause> {
    InfraError::find(e).map(|i| i.cause)
}

#[test]
fn a_full_download_is_verified_and_kept() {
    let data = generated(300_000);
    let srv = TestServer::start(vec![("/img.raw.xz", data.clone())], Mode::Honest);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("img.raw.xz");
    download::fetch(&srv.url("/img.raw.xz"), &sha256(&data), &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    // Already there with the right hash: no second request.
    download::fetch(&srv.url("/img.raw.xz"), &sha256(&data), &dest).unwrap();
    assert_eq!(srv.requests.load(Ordering::SeqCst), 1);
}

#[test]
fn a_cut_download_resumes_with_range_where_it_stopped() {
    let data = generated(500_000);
    let srv = TestServer::start(vec![("/f", data.clone())], Mode::CutFirstAt(123_457));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.raw.xz");
    let err = download::fetch(&srv.url("/f"), &sha256(&data), &dest).unwrap_err();
    assert_eq!(infra_cause(&err), Some(InfraCause::Download), "{err:#}");
    assert!(!dest.exists());
    let part = dest.with_extension("part");
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept <= 123_457, "kept {kept}");
    download::fetch(&srv.url("/f"), &sha256(&data), &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let ranges = srv.ranges.lock().unwrap().clone();
    assert_eq!(ranges, vec![None, Some(format!("bytes={kept}-"))]);
}

#[test]
fn a_server_that_ignores_range_sends_it_all_again() {
    let data = generated(200_000);
    let srv = TestServer::start(vec![("/f", data.clone())], Mode::IgnoresRange);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.raw.xz");
    // A stale partial file of other bytes: a 200 answer must replace it, not extend it.
    std::fs::write(dest.with_extension("part"), vec![0xAAu8; 5000]).unwrap();
    download::fetch(&srv.url("/f"), &sha256(&data), &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        srv.ranges.lock().unwrap().clone(),
        vec![Some("bytes=5000-".to_string())]
    );
}

#[test]
fn a_wrong_content_range_is_infra_and_drops_the_partial_file() {
    let data = generated(200_000);
    let srv = TestServer::start(vec![("/f", data.clone())], Mode::WrongRange);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.raw.xz");
    let part = dest.with_extension("part");
    std::fs::write(&part, &data[..60_000]).unwrap();
    let err = download::fetch(&srv.url("/f"), &sha256(&data), &dest).unwrap_err();
    assert_eq!(infra_cause(&err), Some(InfraCause::Download));
    let msg = format!("{err:#}");
    assert!(
        msg.contains("Content-Range") && msg.contains("60000"),
        "{msg}"
    );
    assert!(!part.exists() && !dest.exists());
}

#[test]
fn a_hash_mismatch_is_infra_and_nothing_is_kept_as_valid() {
    let data = generated(100_000);
    let srv = TestServer::start(vec![("/f", data.clone())], Mode::Honest);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.raw.xz");
    let wrong = "0".repeat(64);
    let err = download::fetch(&srv.url("/f"), &wrong, &dest).unwrap_err();
    assert_eq!(infra_cause(&err), Some(InfraCause::Download));
    assert!(format!("{err:#}").contains("SHA-256 mismatch"));
    assert!(!dest.exists() && !dest.with_extension("part").exists());
}

#[test]
fn no_server_is_infra() {
    // Bind, note the port, close: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let err = download::fetch(
        &format!("http://127.0.0.1:{port}/f"),
        &"0".repeat(64),
        &dir.path().join("f"),
    )
    .unwrap_err();
    assert_eq!(infra_cause(&err), Some(InfraCause::Download), "{err:#}");
}

/// A `tar.xz` holding one file, as Debian packs `debian-hurd.img.tar.xz`.
fn tar_xz_of(name: &str, data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), data).unwrap();
    let out = dir.path().join("a.tar.xz");
    let st = std::process::Command::new("tar")
        .arg("-cJf")
        .arg(&out)
        .arg("-C")
        .arg(dir.path())
        .arg(name)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(out).unwrap()
}

fn xz_of(data: &[u8]) -> Vec<u8> {
    let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn hurd_like(srv: &TestServer, lock: &str) -> PublishedDisk {
    PublishedDisk {
        url: srv.url("/hurd/debian-hurd.img.tar.xz"),
        format: ArchiveFormat::TarXz,
        sha256: None,
        sha512_sums: Some(srv.url("/hurd/SHA512SUMS")),
        lock: Some(PathBuf::from(lock)),
        boot: None,
    }
}

fn is_read_only(p: &Path) -> bool {
    std::fs::metadata(p).unwrap().permissions().readonly()
}

#[test]
fn hurd_is_pinned_at_the_first_download_and_held_to_the_lock_later() {
    let raw = generated(64 * 1024);
    let packed = tar_xz_of("debian-hurd-20250101.img", &raw);
    let sums = format!(
        "{}  other.iso\n{}  debian-hurd.img.tar.xz\n",
        "c".repeat(128),
        sha512(&packed)
    );
    let srv = TestServer::start(
        vec![
            ("/hurd/debian-hurd.img.tar.xz", packed.clone()),
            ("/hurd/SHA512SUMS", sums.into_bytes()),
        ],
        Mode::Honest,
    );
    let images = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let p = hurd_like(&srv, "hurd.lock");
    let disk = published::fetch("hurd-x", &p, images.path(), cache.path(), None).unwrap();
    assert_eq!(std::fs::read(&disk.base).unwrap(), raw);
    assert!(is_read_only(&disk.base));
    let lock = LockFile::read(&images.path().join("hurd.lock")).unwrap();
    assert_eq!(
        lock.images["hurd-x"],
        LockEntry {
            url: p.url.clone(),
            sha512: sha512(&packed)
        }
    );
    // Cached now: found without the network.
    let again = published::cached("hurd-x", &p, images.path(), cache.path()).unwrap();
    assert_eq!(again.base, disk.base);

    // Debian rebuilt `latest/`: a fresh cache downloads other bytes, which the lock refuses.
    let rebuilt = tar_xz_of("debian-hurd-20250201.img", &generated(70_000));
    let srv2 = TestServer::start(
        vec![("/hurd/debian-hurd.img.tar.xz", rebuilt)],
        Mode::Honest,
    );
    let mut lock2 = lock.clone();
    let p2 = hurd_like(&srv2, "hurd.lock");
    lock2.images.get_mut("hurd-x").unwrap().url = p2.url.clone();
    lock2.write(&images.path().join("hurd.lock")).unwrap();
    let cache2 = tempfile::tempdir().unwrap();
    let err = published::fetch("hurd-x", &p2, images.path(), cache2.path(), None).unwrap_err();
    assert_eq!(infra_cause(&err), Some(InfraCause::Download), "{err:#}");
    assert!(format!("{err:#}").contains("SHA-512 mismatch"));
    assert_eq!(
        srv2.requests.load(Ordering::SeqCst),
        1,
        "the sums are not consulted once pinned"
    );
}

#[test]
fn freebsd_raw_xz_is_unpacked_once_and_from_checks_the_hash() {
    let raw = generated(256 * 1024);
    let packed = xz_of(&raw);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("FreeBSD-X-BASIC-CI.raw.xz");
    std::fs::write(&file, &packed).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let p = PublishedDisk {
        url: "https://example.invalid/FreeBSD-X-BASIC-CI.raw.xz".into(),
        format: ArchiveFormat::RawXz,
        sha256: Some(sha256(&packed)),
        sha512_sums: None,
        lock: None,
        boot: None,
    };
    let disk = published::fetch("fb", &p, dir.path(), cache.path(), Some(&file)).unwrap();
    assert_eq!(std::fs::read(&disk.base).unwrap(), raw);
    assert!(is_read_only(&disk.base));
    assert_eq!(disk.pin, format!("sha256:{}", sha256(&packed)));
    // Brought in damaged: refused, and the cache gets nothing new.
    let bad = dir.path().join("bad.raw.xz");
    std::fs::write(&bad, &packed[..packed.len() - 1]).unwrap();
    let cache2 = tempfile::tempdir().unwrap();
    let err = published::fetch("fb", &p, dir.path(), cache2.path(), Some(&bad)).unwrap_err();
    assert_eq!(infra_cause(&err), Some(InfraCause::Download));
    assert!(published::cached("fb", &p, dir.path(), cache2.path()).is_none());
}

#[test]
fn an_unreachable_image_says_in_one_line_how_to_get_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = PublishedDisk {
        url: format!("http://127.0.0.1:{port}/FreeBSD.raw.xz"),
        format: ArchiveFormat::RawXz,
        sha256: Some("a".repeat(64)),
        sha512_sums: None,
        lock: None,
        boot: None,
    };
    let cache = tempfile::tempdir().unwrap();
    let err = published::prepare("freebsd-x", &p, cache.path(), cache.path()).unwrap_err();
    let msg = format!("{err:#}");
    assert_eq!(infra_cause(&err), Some(InfraCause::Download));
    assert!(!msg.contains('\n'), "{msg}");
    assert!(
        msg.starts_with("image freebsd-x is not available")
            && msg.contains("cargo xtask fetch --image freebsd-x")
            && msg.contains("--from FILE"),
        "{msg}"
    );
}

#[test]
fn every_image_file_parses_and_published_sources_are_well_formed() {
    let root = kstorm::host::workspace_root();
    let catalog = kstorm::config::Catalog::load(&root).unwrap();
    let mut published_names = Vec::new();
    for (name, image) in &catalog.images {
        if let Source::PublishedDisk(p) = &image.source {
            p.check().unwrap();
            assert!(p.url.starts_with("https://"), "{name}: {}", p.url);
            assert!(image.guest.is_some(), "{name} has no guest recipe");
            published_names.push(name.as_str());
        }
    }
    for want in ["freebsd-14.1", "freebsd-14.3", "hurd-amd64", "hurd-i386"] {
        assert!(published_names.contains(&want), "{want} missing");
    }
    let fb = &catalog.images["freebsd-14.3"];
    let Source::PublishedDisk(p) = &fb.source else {
        unreachable!()
    };
    assert_eq!(
        p.sha256.as_deref(),
        Some("ec0f5a4bbe63aa50a725d9fee0f1931f850e9a21cbebdadb991df00f168d6805")
    );
    // The committed lock file reads as one.
    LockFile::read(&root.join("images/hurd.lock")).unwrap();
}

#[test]
fn a_bad_hash_in_a_recipe_names_the_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fb.yaml");
    std::fs::write(
        &path,
        "name: fb\ndescription: d\nos: freebsd\nsource:\n  published-disk:\n    url: https://x.org/a.raw.xz\n    format: raw.xz\n    sha256: 1234\nboot: {machine: pc}\ntransport: {serial-shell: {user: root}}\n",
    )
    .unwrap();
    let err = kstorm::config::load_image(&path).unwrap_err().to_string();
    assert!(
        err.contains("fb.yaml") && err.contains("source.published-disk.sha256"),
        "{err}"
    );
}

#[test]
fn the_lock_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hurd.lock");
    assert_eq!(LockFile::read(&path).unwrap(), LockFile::default());
    let mut lock = LockFile::default();
    lock.images.insert(
        "hurd-amd64".into(),
        LockEntry {
            url: "https://cdimage.debian.org/x.tar.xz".into(),
            sha512: "ab".repeat(64),
        },
    );
    lock.write(&path).unwrap();
    assert_eq!(LockFile::read(&path).unwrap(), lock);
}

#[test]
fn the_hurd_grub_menu_keeps_the_images_modules_and_quotes_every_word() {
    let catalog = kstorm::config::Catalog::load(&kstorm::host::workspace_root()).unwrap();
    let image = &catalog.images["hurd-amd64"];
    let Source::PublishedDisk(p) = &image.source else {
        unreachable!()
    };
    let menu = published::grub_menu(p.boot.as_ref().unwrap(), &image.boot.cmdline).unwrap();
    assert!(menu.starts_with("serial --unit=0"), "{menu}");
    assert!(menu.contains("  multiboot '(hd0,msdos1)/boot/gnumach-1.8-amd64.gz' 'console=com0'"));
    assert!(menu.contains("  module '(hd0,msdos1)/hurd/ext2fs.static' 'ext2fs'"));
    for line in menu.lines() {
        let outside: String = line.split('\'').step_by(2).collect();
        assert!(!outside.contains('$'), "unquoted $ in {line:?}");
    }
}

// ---- statistics parsers ----

fn fixture(name: &str) -> String {
    let p = kstorm::host::workspace_root()
        .join("xtask/tests/fixtures/guest")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The allocator statistics the seed incident quotes (docs/incidents.md, FreeBSD), as data.
fn seed_001() -> Option<String> {
    Some(fixture("seed-001-vmstat.txt"))
}

#[test]
fn vmstat_z_of_the_seed_with_its_wrapped_lines() {
    let Some(seed) = seed_001() else {
        panic!("seed 001 not found beside the workspace (shared/seeds/001_*.txt)");
    };
    let start = seed.find("ITEM").unwrap();
    let end = seed[start..]
        .find("\n-- ")
        .map(|e| start + e)
        .unwrap_or(seed.len());
    let zones = vmstat::parse_zones(&seed[start..end]);
    // Every row wrapped after its FREE column: REQUESTS and FAILURES come from the next line.
    assert_eq!(zones["UMA Slabs"]["requests"], 15454953);
    assert_eq!(zones["128 Bucket"]["failures"], 109049);
    assert_eq!(zones["64 Bucket"]["failures"], 177);
    assert_eq!(zones["mbuf_cluster"]["limit"], 8768);
    assert_eq!(zones["IPFW dynamic rule zone"]["used"], 147);
    assert_eq!(zones["FFS2 dinode"]["requests"], 40152792);
    assert!(zones.len() > 80, "{} zones", zones.len());
    let failing = series::failing(&[zones], vmstat::ZONE_FAILURES);
    // The zones the seed's dump shows failing, largest first.
    assert_eq!(failing[0], ("NetGraph items".to_string(), 1170428));
    assert!(failing.contains(&("128 Bucket".to_string(), 109049)));
}

#[test]
fn vmstat_m_rows_of_the_seed() {
    let seed = seed_001().expect("seed 001 beside the workspace");
    // The seed quotes single rows under the 6.x header; put the header back above them.
    let rows: Vec<&str> = seed
        .lines()
        .map(|l| l.trim_start_matches('>').trim_start())
        .filter(|l| l.starts_with("libalias "))
        .collect();
    assert_eq!(rows.len(), 2);
    let text = format!(
        "         Type InUse MemUse HighUse Requests  Size(s)\n{}\n",
        rows.join("\n")
    );
    let sample = vmstat::parse_malloc(&text);
    // Both rows have the same name; the last one read wins.
    assert_eq!(sample["libalias"]["inuse"], 79542);
    assert_eq!(sample["libalias"]["memuse"], 9983 * 1024);
    assert_eq!(sample["libalias"]["requests"], 179493840);
    assert!(
        !sample["libalias"].contains_key("highuse"),
        "`-` is no number"
    );
}

#[test]
fn vmstat_m_today_with_blank_names_and_size_lists() {
    let sample = vmstat::parse_malloc(&fixture("vmstat-m-14.txt"));
    assert_eq!(sample["CAM dev queue"]["inuse"], 1);
    assert_eq!(sample["CAM dev queue"]["memuse"], 1024);
    assert_eq!(sample["mbuf_tag"]["requests"], 41);
    assert_eq!(sample["sysctl tmp"]["memuse"], 2 * 1024);
    assert_eq!(sample["unused type"]["inuse"], 0, "a row without sizes");
    assert_eq!(sample.len(), 6);
}

#[test]
fn vmstat_z_today_with_fail_sleep_xdomain() {
    let zones = vmstat::parse_zones(&fixture("vmstat-z-14.txt"));
    assert_eq!(zones["UMA Kegs"]["size"], 384);
    assert_eq!(zones["mbuf_cluster"]["failures"], 3);
    assert_eq!(zones["socket"]["limit"], 258056);
    assert_eq!(zones["128 Bucket"]["used"], 42);
    assert_eq!(zones["tcp_inpcb"]["xdomain"], 0);
    assert_eq!(zones.len(), 6);
}

#[test]
fn hurd_ps_vmstat_and_portinfo() {
    let ps = hurd::parse_ps(&fixture("hurd-ps.txt"));
    assert_eq!(
        ps["/hurd/ext2fs.static -A /dev/wd0s1[5]"]["rss"],
        12 * 1024 * 1024
    );
    assert_eq!(ps["/hurd/null[61]"]["threads"], 2);
    let servers = hurd::servers(&ps);
    assert!(servers
        .iter()
        .any(|(n, pid)| n.starts_with("/hurd/null") && *pid == 61));
    assert!(!servers.iter().any(|(n, _)| n.starts_with("-bash")));
    let vm = hurd::parse_vmstat(&fixture("hurd-vmstat.txt"));
    assert_eq!(vm["vm"]["free"], 900 * 1024 * 1024);
    assert_eq!(vm["vm"]["zero filled"], 12345);
    let ports = hurd::parse_portinfo(&fixture("hurd-portinfo.txt"));
    assert_eq!(ports["ports"], 5);
    assert_eq!(ports["receive"], 2);
    assert_eq!(ports["send"], 2);
    assert_eq!(ports["send-once"], 1);
}

#[test]
fn servers_that_grew_at_every_capture_are_flagged() {
    let caps: Vec<vmstat::Sample> = ["hurd-ps.txt", "hurd-ps-2.txt", "hurd-ps-3.txt"]
        .iter()
        .map(|f| capture::parse(StatsFormat::HurdPs, &fixture(f)))
        .collect();
    let rows = series::series(&caps, "rss");
    let flagged: Vec<&str> = rows
        .iter()
        .filter(|r| r.monotonic)
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(flagged, vec!["/hurd/null[61]"]);
    assert_eq!(
        series::grew_most(&rows).unwrap().name,
        "/hurd/ext2fs.static -A /dev/wd0s1[5]"
    );
}

// ---- boot-flow rehearsal on a STAND-IN guest ----
//
// The FreeBSD and Hurd images cannot be downloaded here. These tests run the very same driver
// (tunables and the reboot, sysctls read back, statistics captures, the portable payload) on
// the Linux disk image (images/linux-disk.yaml) dressed up as each system: its guest recipe
// points at small scripts that answer like FreeBSD's `vmstat -m`/`-z` and the loader's
// tunables, or like the Hurd's `ps`/`vmstat`/`portinfo`. What is real: QEMU, the Linux kernel,
// the serial login, the upload, the file written before the reboot and read after it, the
// payload's fork/descriptor/socket experiments. What is a stand-in: the commands' output and
// the compiler (a copy of the same C file built on the host).

mod common;

/// The stand-in's files: linux-disk's own, plus the answering scripts and the host-built agent.
fn standin_files(dir: &Path) -> PathBuf {
    let root = kstorm::host::workspace_root();
    let files = dir.join("standin.d");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(root.join("images/linux-disk.d"))
        .arg(&files)
        .status()
        .unwrap();
    assert!(st.success());
    let bin = files.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(files.join("usr/local/lib")).unwrap();
    std::fs::create_dir_all(files.join("boot")).unwrap();
    std::fs::write(files.join("boot/.keep"), "").unwrap();
    let agent = files.join("usr/local/lib/kstorm-portable");
    let st = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&agent)
        .arg(root.join("guest-payload/portable/kstorm-portable.c"))
        .status()
        .unwrap();
    assert!(st.success(), "building the stand-in's agent on the host");
    let script = |name: &str, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = bin.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script("standin-cc", STANDIN_CC);
    script("standin-kenv", STANDIN_KENV);
    script("vmstat", STANDIN_VMSTAT);
    script("standin-ps", STANDIN_PS);
    script("standin-portinfo", STANDIN_PORTINFO);
    files
}

/// STAND-IN compiler: checks the source arrived, installs the agent built from it on the host.
const STANDIN_CC: &str = "#!/bin/sh\n# STAND-IN for the guest's cc: $1 source, $2 output\ngrep -q kstorm-portable \"$1\" || exit 1\ncp /usr/local/lib/kstorm-portable \"$2\"\n";

/// STAND-IN for `sysctl -n` of a loader tunable: the value the loader file gave at boot.
const STANDIN_KENV: &str = "#!/bin/sh\n# STAND-IN for FreeBSD's sysctl -n: tunables from the loader file, else Linux's sysctl\nv=$(sed -n \"s/^$1=\\\"\\(.*\\)\\\"$/\\1/p\" /boot/loader.conf.local 2>/dev/null)\nif [ -n \"$v\" ]; then echo \"$v\"; else sysctl -n \"$1\"; fi\n";

/// STAND-IN `vmstat -m` / `vmstat -z` in FreeBSD 14's layout; `ngtest` grows at every call,
/// `mbuf_cluster` reports failures.
const STANDIN_VMSTAT: &str = r#"#!/bin/sh
# STAND-IN for FreeBSD's vmstat -m / -z
n=$(cat /tmp/standin-vmstat 2>/dev/null || echo 0); n=$((n + 1)); echo $n > /tmp/standin-vmstat
case "$1" in
-m)
  echo "         Type Use Memory Req Size(s)"
  echo "       devbuf  1419  4216K  1650 16,32,64,128"
  echo "       ngtest  $((n * 10))  $((n * 100))K  $((n * 12)) 1024"
  echo "   sysctl tmp     0     2K  1903 16,32" ;;
-z)
  echo "ITEM                   SIZE  LIMIT     USED     FREE      REQ     FAIL SLEEP XDOMAIN"
  echo ""
  echo "UMA Kegs:               384,      0,     236,       4,     236,   0,   0,   0"
  echo "mbuf_cluster:          2048,  62060,    $((1000 + n)),       2,    1016,   3,   0,   0" ;;
esac
"#;

/// STAND-IN for the Hurd's `ps`: `/hurd/null` grows at every call.
const STANDIN_PS: &str = r#"#!/bin/sh
# STAND-IN for the Hurd's ps
n=$(cat /tmp/standin-ps 2>/dev/null || echo 0); n=$((n + 1)); echo $n > /tmp/standin-ps
echo "  PID  TH  Vmem   RSS Args"
echo "    1   1  132M  512K /hurd/startup"
echo "    5  12  1.2G   12M /hurd/ext2fs.static -A /dev/wd0s1"
echo "   61   2  131M  $((n * 100))K /hurd/null"
"#;

/// STAND-IN for `portinfo -a PID`: the null server's port count grows.
const STANDIN_PORTINFO: &str = r#"#!/bin/sh
# STAND-IN for the Hurd's portinfo -a PID
n=$(cat /tmp/standin-ps 2>/dev/null || echo 1)
[ "$2" = 61 ] || n=1
i=0; while [ $i -lt $n ]; do echo "   $((i + 1)): send (refs: 1)"; i=$((i + 1)); done
echo "  99: receive"
"#;

/// linux-disk renamed `name`, with the stand-in's files, the serial shell, and `guest` (YAML).
fn standin_image(dir: &Path, name: &str, guest: &str) -> kstorm::config::Image {
    let root = kstorm::host::workspace_root();
    let files = standin_files(dir);
    let yaml = format!(
        "name: {name}\ndescription: STAND-IN (Linux disk image answering like another system)\nos: linux\nsource: {{debian-kernel: {{metapackage: linux-image-amd64}}}}\nboot:\n  machine: microvm\n  cmdline: [console=ttyS0, panic=-1, loglevel=5, root=/dev/vda]\ndisk:\n  packages: [busybox-static, dropbear-bin]\n  modules: [virtio_mmio, virtio_blk, virtio_net, ext4, crc32c_generic]\n  files: {}\n  init: {}\n  users: [{{name: root, password: kstorm}}]\n  size: 64M\ntransport: {{serial-shell: {{user: root, password: kstorm}}}}\n{guest}deadlines: {{boot: 120s, heartbeat: 30s, cell: 600s}}\n",
        files.display(),
        root.join("images/linux-disk.init").display()
    );
    common::inline_image(dir, name, &yaml)
}

const SCENARIOS: &str = "cases:\n  - {name: fork-socket, scenario: fork-hold, params: {children: 16, fds: 8, fd_kind: socket, hold_ms: 1500}, expect: pass}\n  - {name: socket-churn, scenario: fd-churn, params: {procs: 2, duration_s: 2, fd_kind: socket}, expect: pass}\n  - {name: kill-slow, scenario: spawn-kill, params: {cycles: 3, batch: 4, fds: 8, kill_interval_ms: 50}, expect: pass}\n";

#[test]
fn standin_freebsd_boot_flow_tunables_reboot_stats_and_payload() {
    let dir = tempfile::tempdir().unwrap();
    let guest = "guest:\n  tunables: {path: /boot/loader.conf.local, reboot: [/sbin/reboot]}\n  boot_sysctls: {kernel.panic_on_oops: \"1\"}\n  sysctl_set: [sysctl, -w]\n  sysctl_get: [/usr/local/bin/standin-kenv]\n  stats:\n    - {name: malloc, command: [/usr/local/bin/vmstat, -m], format: vmstat-m}\n    - {name: zones, command: [/usr/local/bin/vmstat, -z], format: vmstat-z}\n  payload: {route: portable-c, compile: [/usr/local/bin/standin-cc, \"{src}\", \"{out}\"]}\n";
    let image = standin_image(dir.path(), "standin-freebsd", guest);
    let suite = format!(
        "name: inline\ndescription: STAND-IN FreeBSD boot flow\nimages: [standin-freebsd]\nram: [256M]\nvariants:\n  - {{name: kmem, tunables: {{vm.kmem_size: 64M, kern.maxproc: \"2000\"}}}}\n{}",
        SCENARIOS.lines().take(3).collect::<Vec<_>>().join("\n") + "\n"
    );
    let (records, out) = common::run_suite(&suite, vec![image]);
    assert_eq!(records.len(), 2);
    let console = |id: &str| {
        std::fs::read_to_string(
            out.path()
                .join("results/latest/cells")
                .join(id)
                .join("console.log"),
        )
        .or_else(|_| {
            let runs = std::fs::read_dir(out.path().join("results")).unwrap();
            let run = runs
                .flatten()
                .find(|e| e.path().join("cells").is_dir())
                .unwrap();
            std::fs::read_to_string(run.path().join("cells").join(id).join("console.log"))
        })
        .unwrap_or_default()
    };
    for r in &records {
        assert_eq!(
            r.verdict,
            kstorm::verdict::Verdict::Pass,
            "{}: {}",
            r.id,
            r.verdict.describe()
        );
        // The tunables' reboot really happened, in the same QEMU: the kernel restarted and a
        // login prompt came again after it.
        let log = console(&r.id);
        let restart = log.find("reboot: Restarting system");
        assert!(
            restart.is_some_and(|at| log[at..].contains("login:")),
            "{}: no restart followed by a login on the console:\n{}",
            r.id,
            &log[log.len().saturating_sub(3000)..]
        );
        let res = &r.results[0];
        let f = |k: &str| res.facts.get(k).cloned().unwrap_or_default();
        assert_eq!(f("payload.route"), "portable-c");
        // Written before the reboot, read back after it.
        assert_eq!(f("tunable.kern.maxproc.asked"), "2000");
        assert_eq!(f("tunable.kern.maxproc.reported"), "2000");
        assert_eq!(f("tunable.vm.kmem_size.reported"), "64M");
        assert_eq!(f("sysctl.kernel.panic_on_oops.reported"), "1");
        assert!(
            f("stats.malloc.monotonic").contains("ngtest"),
            "{:?}",
            res.facts
        );
        assert!(
            f("stats.malloc.grew_most").starts_with("ngtest memuse +"),
            "{:?}",
            res.facts
        );
        assert_eq!(f("stats.zones.failures"), "mbuf_cluster=3");
        let caps: usize = f("stats.malloc.captures").parse().unwrap();
        assert!(caps >= 3, "before, during, after: {caps}");
    }
    let fork = records.iter().find(|r| r.case == "fork-socket").unwrap();
    assert_eq!(fork.results[0].measurements["children"].value, 16.0);
    let churn = records.iter().find(|r| r.case == "socket-churn").unwrap();
    assert!(churn.results[0].measurements["ops"].value > 0.0);
}

#[test]
fn standin_hurd_boot_flow_servers_and_ports_that_grew() {
    let dir = tempfile::tempdir().unwrap();
    let guest = "guest:\n  stats:\n    - {name: servers, command: [/usr/local/bin/standin-ps], format: hurd-ps}\n    - {name: ports, command: [/usr/local/bin/standin-portinfo, -a, \"{pid}\"], format: portinfo, per_server: true}\n  payload: {route: portable-c, compile: [/usr/local/bin/standin-cc, \"{src}\", \"{out}\"]}\n";
    let image = standin_image(dir.path(), "standin-hurd", guest);
    let suite = "name: inline\ndescription: STAND-IN Hurd boot flow\nimages: [standin-hurd]\nram: [256M]\ncases:\n  - {name: kill-fast, scenario: spawn-kill, params: {cycles: 4, batch: 8, fds: 16, kill_interval_ms: 0}, expect: pass}\n";
    let (records, _out) = common::run_suite(suite, vec![image]);
    let r = common::only(records);
    assert_eq!(
        r.verdict,
        kstorm::verdict::Verdict::Pass,
        "{}",
        r.verdict.describe()
    );
    let res = &r.results[0];
    let f = |k: &str| res.facts.get(k).cloned().unwrap_or_default();
    assert_eq!(f("payload.route"), "portable-c");
    assert_eq!(
        f("stats.servers.monotonic"),
        "/hurd/null[61]",
        "{:?}",
        res.facts
    );
    assert!(
        f("stats.ports.monotonic").contains("/hurd/null[61]"),
        "{:?}",
        res.facts
    );
    assert!(res.measurements["spawned"].value >= 8.0);
}
