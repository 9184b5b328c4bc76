//! GNU/Hurd's statistics: the servers' memory and thread counts (`ps`), the kernel's memory
//! (`vmstat`), and how many port rights a server holds (`portinfo -a PID`), each parsed into the
//! same [`Sample`] shape as FreeBSD's tables so the series code is shared.

use super::vmstat::Sample;
use std::collections::BTreeMap;

use super::size_bytes as size;

/// The header names of `ps` columns across formats, mapped to one key.
fn ps_column(name: &str) -> String {
    match name.to_ascii_lowercase().as_str() {
        "vmem" | "vsz" | "vsize" => "vsize".into(),
        "th" | "nth" | "thcount" => "threads".into(),
        "args" | "command" | "cmd" => "args".into(),
        other => other.into(),
    }
}

/// `ps` with a header row whose last column is the command (`PID TH Vmem RSS Args`, or
/// `PID TH VSZ RSS COMMAND`). Rows are keyed by the command and PID (`/hurd/ext2fs[5]`) so two
/// instances of one server stay apart; the numeric columns are kept, sizes in bytes.
pub fn parse_ps(text: &str) -> Sample {
    let mut out = Sample::new();
    let mut header: Option<Vec<String>> = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        if words[0].eq_ignore_ascii_case("pid") {
            header = Some(words.iter().map(|w| ps_column(w)).collect());
            continue;
        }
        let Some(cols) = &header else { continue };
        let last = cols.len() - 1;
        if cols[last] != "args" || words.len() < cols.len() {
            continue;
        }
        let args = words[last..].join(" ");
        let mut values = BTreeMap::new();
        for (c, w) in cols[..last].iter().zip(&words[..last]) {
            if let Some(v) = size(w) {
                values.insert(c.clone(), v);
            }
        }
        let Some(pid) = values.get("pid") else {
            continue;
        };
        out.insert(format!("{args}[{pid}]"), values);
    }
    out
}

/// The servers among a `ps` sample (commands under `/hurd/`), with their PIDs.
pub fn servers(ps: &Sample) -> Vec<(String, u64)> {
    ps.iter()
        .filter(|(name, _)| name.starts_with("/hurd/"))
        .filter_map(|(name, v)| Some((name.clone(), *v.get("pid")?)))
        .collect()
}

/// The Hurd's `vmstat`: `name: value` lines (`free: 900M`, `zero filled: 12345`). One row,
/// `vm`, with every value that reads as a number (sizes in bytes).
pub fn parse_vmstat(text: &str) -> Sample {
    let mut row = BTreeMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.split_whitespace().next().unwrap_or_default();
        if let Some(v) = size(value) {
            row.insert(name.trim().to_ascii_lowercase(), v);
        }
    }
    let mut out = Sample::new();
    if !row.is_empty() {
        out.insert("vm".into(), row);
    }
    out
}

/// `portinfo -a PID`: one line per port name (`   12: send (refs: 1)`, or with `-v` more). The
/// count of rights, and of each kind.
pub fn parse_portinfo(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line.trim().split_once(':') else {
            continue;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        *counts.entry("ports".to_string()).or_insert(0) += 1;
        for kind in ["receive", "send-once", "send", "port-set", "dead-name"] {
            if rest
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .any(|w| w == kind)
            {
                *counts.entry(kind.to_string()).or_insert(0) += 1;
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_ps_prints_them() {
        assert_eq!(size("1.5M"), Some(1572864));
        assert_eq!(size("640K"), Some(655360));
        assert_eq!(size("17"), Some(17));
        assert_eq!(size("-"), None);
    }
}
