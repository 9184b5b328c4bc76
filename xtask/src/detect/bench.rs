//! Throughput benchmark of the detector (`cargo xtask bench detect`): a 100 MB clean console log
//! built from the clean fixtures (real boots and stress runs), scanned by the detector in pipe-sized
//! chunks, compared with a plain `memchr` line count over the same bytes.
//!
//! Each copy of a log is one boot, so it gets a fresh detector: fed as one stream, the second
//! boot banner would rightly be an unexpected reboot.

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

/// Copies of the logs until they total `size` bytes, each with a first line of its own.
pub fn build_log(logs: &[Vec<u8>], size: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut total = 0;
    let mut copy = 0usize;
    while total < size {
        for log in logs {
            if total >= size {
                break;
            }
            let mut boot = format!("kstorm-bench: copy {copy}\n").into_bytes();
            boot.extend_from_slice(log);
            if !log.ends_with(b"\n") {
                boot.push(b'\n');
            }
            total += boot.len();
            out.push(boot);
            copy += 1;
        }
    }
    out
}

/// Measures the detector (one per boot) and the memchr line count over `boots`, best of `rounds`.
pub fn measure(os: Os, boots: &[Vec<u8>], chunk: usize, rounds: usize) -> Result<Throughput> {
    let mut best_det = Duration::MAX;
    let mut best_memchr = Duration::MAX;
    let mut lines = 0;
    let mut reports = 0;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        lines = 0;
        reports = 0;
        for boot in boots {
            let mut detector = Detector::new(os)?;
            for piece in boot.chunks(chunk) {
                detector.feed(piece);
            }
            lines += detector.stats().lines;
            reports += detector.finish().len();
        }
        best_det = best_det.min(t.elapsed());

        let t = Instant::now();
        let n: usize = boots
            .iter()
            .map(|b| memchr::memchr_iter(b'\n', std::hint::black_box(b)).count())
            .sum();
        best_memchr = best_memchr.min(t.elapsed());
        std::hint::black_box(n);
    }
    Ok(Throughput {
        bytes: boots.iter().map(Vec::len).sum(),
        lines,
        detector: best_det,
        memchr: best_memchr,
        reports,
    })
}

/// The benchmark: builds a `size`-byte clean log from the fixtures of `os`, measures, prints.
pub fn bench_detect_throughput(fixtures: &Path, os: Os, size: usize) -> Result<Throughput> {
    let logs = clean_logs(fixtures, os)?;
    let boots = build_log(&logs, size);
    let result = measure(os, &boots, 64 * 1024, 3)?;
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
