//! Framed result lines.
//!
//! A frame is one text line:
//!
//! ```text
//! KSTORM1 <cell-id> <seq> <crc32> <json>\n
//! ```
//!
//! - `cell-id` is the harness's cell id (no spaces), so a stray line from another run can't be
//!   taken for this one;
//! - `seq` counts frames from 0, so the harness notices a lost frame;
//! - `crc32` is the IEEE CRC-32 (as zlib computes it) of `"<cell-id> <seq> <json>"`, written as
//!   8 lower-case hex digits, so a line broken by interleaved kernel output is rejected rather
//!   than misread;
//! - `json` is one [`Message`] on one line.
//!
//! The format is simple enough to produce from freestanding C (the GNU Mach bootstrap task
//! speaks it too).

use crate::memory_evidence::MemoryEvidence;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The marker every frame starts with.
pub const MAGIC: &str = "KSTORM1";

/// One message from the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Message {
    /// First frame: who is talking and on what.
    Hello {
        /// Which agent speaks: "linux-payload", "mach-bootstrap", ...
        agent: String,
        agent_version: String,
        /// `uname -r` or the kernel's version banner.
        kernel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mem_total_kib: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ncpu: Option<u32>,
    },
    /// A scenario begins.
    Start { scenario: String, index: u32 },
    /// Progress of the running scenario; at least once a second while it runs.
    Hb { scenario: String, progress: u64 },
    /// A scenario finished (or gave up) and what it measured.
    Result(ScenarioResult),
    /// Free text worth keeping in the results (not for verdicts).
    Log { msg: String },
    /// All scenarios of the plan ran; the guest powers off next.
    Done,
}

/// What one scenario reports when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub index: u32,
    pub outcome: Outcome,
    /// Why it failed, or the error that stopped growth; `None` when there is nothing to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Numbers with units, e.g. `children: {value: 812, unit: "count"}`.
    #[serde(default)]
    pub measurements: BTreeMap<String, Measurement>,
    /// Facts that are not numbers, e.g. `oom_victim: "hog-3"`, `stop_errno: "EAGAIN"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
    /// Time series, e.g. memory use over time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub series: BTreeMap<String, Series>,
    /// The memory accounting behind each leak decision the scenario made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<MemoryEvidence>,
    /// Linux: how much each `/proc/vmstat` counter of the plan grew over the scenario.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vmstat: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The scenario ran to its end and its own checks held.
    Pass,
    /// The scenario's own checks failed (wrong errno, wrong OOM victim, ...).
    Fail,
    /// The scenario could not do its work for reasons outside the kernel (a tool it runs
    /// lacked resources or support): the cell is infra.
    Infra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub value: f64,
    pub unit: String,
}

impl Measurement {
    pub fn new(value: f64, unit: &str) -> Self {
        Measurement {
            value,
            unit: unit.to_string(),
        }
    }
}

/// Samples `(t, value)` with `t` in seconds since the scenario started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub unit: String,
    pub points: Vec<(f64, f64)>,
}

/// Why a line was not accepted as a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The line does not start with the marker: ordinary console output.
    NotAFrame,
    /// It starts with the marker but its fields are missing or malformed.
    Malformed(&'static str),
    /// The checksum does not match: the line was damaged in transit.
    BadChecksum { expected: u32, actual: u32 },
    /// The checksum matched but the JSON is not a known message.
    BadJson(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::NotAFrame => write!(f, "not a frame"),
            FrameError::Malformed(what) => write!(f, "malformed frame: {what}"),
            FrameError::BadChecksum { expected, actual } => {
                write!(
                    f,
                    "frame checksum mismatch: line says {expected:08x}, content is {actual:08x}"
                )
            }
            FrameError::BadJson(e) => write!(f, "frame JSON not understood: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A frame as read back by the harness.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub cell: String,
    pub seq: u64,
    pub message: Message,
}

fn checksum(cell: &str, seq: u64, json: &str) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(cell.as_bytes());
    h.update(b" ");
    h.update(seq.to_string().as_bytes());
    h.update(b" ");
    h.update(json.as_bytes());
    h.finalize()
}

/// Encodes one frame as a line, newline included.
pub fn encode(cell: &str, seq: u64, message: &Message) -> String {
    let json = serde_json::to_string(message).expect("messages always serialize");
    let crc = checksum(cell, seq, &json);
    format!("{MAGIC} {cell} {seq} {crc:08x} {json}\n")
}

/// Decodes one line (with or without its line ending). Leading bytes before the marker (a
/// carriage return, a prompt) are skipped, so a frame that starts mid-line is still found.
pub fn decode(line: &str) -> Result<Frame, FrameError> {
    let start = line.find(MAGIC).ok_or(FrameError::NotAFrame)?;
    let rest = line[start + MAGIC.len()..].trim_end_matches(['\r', '\n']);
    let rest = rest
        .strip_prefix(' ')
        .ok_or(FrameError::Malformed("no space after marker"))?;
    let mut fields = rest.splitn(4, ' ');
    let cell = fields
        .next()
        .filter(|s| !s.is_empty())
        .ok_or(FrameError::Malformed("no cell id"))?;
    let seq: u64 = fields
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(FrameError::Malformed("sequence number is not a number"))?;
    let crc_text = fields.next().ok_or(FrameError::Malformed("no checksum"))?;
    if crc_text.len() != 8 {
        return Err(FrameError::Malformed("checksum is not 8 hex digits"));
    }
    let expected = u32::from_str_radix(crc_text, 16)
        .map_err(|_| FrameError::Malformed("checksum is not hex"))?;
    let json = fields.next().ok_or(FrameError::Malformed("no payload"))?;
    let actual = checksum(cell, seq, json);
    if actual != expected {
        return Err(FrameError::BadChecksum { expected, actual });
    }
    let message = serde_json::from_str(json).map_err(|e| FrameError::BadJson(e.to_string()))?;
    Ok(Frame {
        cell: cell.to_string(),
        seq,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let mut measurements = BTreeMap::new();
        measurements.insert("children".to_string(), Measurement::new(812.0, "count"));
        Message::Result(ScenarioResult {
            scenario: "fork-hold".into(),
            index: 0,
            outcome: Outcome::Pass,
            error: Some("fork: EAGAIN".into()),
            measurements,
            facts: BTreeMap::new(),
            series: BTreeMap::new(),
            evidence: Vec::new(),
            vmstat: BTreeMap::new(),
        })
    }

    #[test]
    fn round_trip() {
        let line = encode("c1", 7, &sample());
        assert!(line.ends_with('\n'));
        let frame = decode(&line).unwrap();
        assert_eq!(
            frame,
            Frame {
                cell: "c1".into(),
                seq: 7,
                message: sample()
            }
        );
    }

    #[test]
    fn checksum_is_zlib_crc32() {
        // The C side (GNU Mach task) must agree: CRC-32 of "123456789" is cbf43926.
        let mut h = crc32fast::Hasher::new();
        h.update(b"123456789");
        assert_eq!(h.finalize(), 0xcbf43926);
    }

    #[test]
    fn damaged_line_is_rejected_not_misread() {
        let line = encode("c1", 7, &sample());
        // A kernel message interleaved into the middle of the frame.
        let damaged = line.replacen("children", "chil[  3.1] oom dren", 1);
        assert!(matches!(
            decode(&damaged),
            Err(FrameError::BadChecksum { .. })
        ));
        let flipped = line.replacen("812", "813", 1);
        assert!(matches!(
            decode(&flipped),
            Err(FrameError::BadChecksum { .. })
        ));
    }

    #[test]
    fn ordinary_lines_are_not_frames() {
        assert_eq!(
            decode("[    1.0] Kernel panic - not syncing"),
            Err(FrameError::NotAFrame)
        );
        assert!(matches!(
            decode("KSTORM1 c1 x 00000000 {}"),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode("KSTORM1 c1 1 0000 {}"),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn frame_after_other_bytes_on_the_line_is_found() {
        let line = format!("\r# {}", encode("c1", 0, &Message::Done));
        assert_eq!(decode(&line).unwrap().message, Message::Done);
    }
}
