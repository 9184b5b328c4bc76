//! Throughput benchmark of the detector (`cargo xtask bench detect`): a 100 MB clean console log
//! built from the clean fixtures (real boots and stress runs), scanned by the detector in pipe-sized
//! chunks, compared with a plain `memchr` line count over the same bytes.

use super::{Detector, Os};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// One throughput measurement.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub bytes: usize,
    pub lines: u64,
    pub detector: Duration,
    pub memchr: Duration,
    /// Reports the detector found in the clean log (must be 0).
    pub reports: usize,
}

impl Throughput {
    pub fn detector_mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.detector.as_secs_f64()
    }
    pub fn memchr_mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.memchr.as_secs_f64()
    }
    /// Detector speed as a fraction of the line count's.
    pub fn ratio(&self) -> f64 {
        self.detector_mb_s() / self.memchr_mb_s()
    }
}

/// The clean logs among the fixtures of `os` (header `events: none`), without their headers.
pub fn clean_logs(fixtures: &Path, os: Os) -> Result<Vec<Vec<u8>>> {
    let dir = fixtures.join(os.as_str());
    let mut logs = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let bytes = std::fs::read(entry.path())?;
        let Some(split) = bytes.windows(2).position(|w| w == b"\n\n") else {
            continue;
        };
        let header = String::from_utf8_lossy(&bytes[..split]);
        if header.lines().any(|l| l.trim() == "events: none") {
            logs.push(bytes[split + 2..].to_vec());
        }
    }
    if logs.is_empty() {
        bail!("no clean logs (header 'events: none') in {}", dir.display());
    }
    Ok(logs)
}

/// Concatenates the logs until `size` bytes, each copy with its own boot-time offset so the
/// timestamps keep moving as in a long-running console.
pub fn build_log(logs: &[Vec<u8>], size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + (1 << 20));
    let mut copy = 0usize;
    while out.len() < size {
        for log in logs {
            if out.len() >= size {
                break;
            }
            out.extend_from_slice(
                format!("[{:5}.000000] kstorm-bench: copy {copy}\n", copy % 100000).as_bytes(),
            );
            out.extend_from_slice(log);
            if !log.ends_with(b"\n") {
                out.push(b'\n');
            }
            copy += 1;
        }
    }
    out
}

/// Measures the detector and the memchr line count over `log`, best of `rounds`.
pub fn measure(os: Os, log: &[u8], chunk: usize, rounds: usize) -> Result<Throughput> {
    let mut best_det = Duration::MAX;
    let mut best_memchr = Duration::MAX;
    let mut lines = 0;
    let mut reports = 0;
    for _ in 0..rounds.max(1) {
        let mut detector = Detector::new(os)?;
        let t = Instant::now();
        for piece in log.chunks(chunk) {
            detector.feed(piece);
        }
        let stats = detector.stats();
        let found = detector.finish();
        best_det = best_det.min(t.elapsed());
        lines = stats.lines;
        reports = found.len();

        let t = Instant::now();
        let n = memchr::memchr_iter(b'\n', std::hint::black_box(log)).count();
        best_memchr = best_memchr.min(t.elapsed());
        std::hint::black_box(n);
    }
    Ok(Throughput {
        bytes: log.len(),
        lines,
        detector: best_det,
        memchr: best_memchr,
        reports,
    })
}

/// The benchmark: builds a `size`-byte clean log from the fixtures of `os`, measures, prints.
pub fn bench_detect_throughput(fixtures: &Path, os: Os, size: usize) -> Result<Throughput> {
    let logs = clean_logs(fixtures, os)?;
    let log = build_log(&logs, size);
    let result = measure(os, &log, 64 * 1024, 3)?;
    println!(
        "detect throughput ({}): {:.1} MB clean log from {} real logs, {} lines, 64 KiB chunks",
        os.as_str(),
        result.bytes as f64 / 1e6,
        logs.len(),
        result.lines
    );
    println!("  detector:           {:8.0} MB/s", result.detector_mb_s());
    println!("  memchr line count:  {:8.0} MB/s", result.memchr_mb_s());
    println!("  ratio:              {:8.2}", result.ratio());
    if result.reports != 0 {
        bail!(
            "the clean log produced {} reports: a false positive in the fixtures",
            result.reports
        );
    }
    Ok(result)
}
