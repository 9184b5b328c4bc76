//! FreeBSD's kernel-allocator statistics: `vmstat -m` (malloc(9) types) and `vmstat -z` (UMA
//! zones), parsed into one [`Sample`] each.
//!
//! Both tables are read by their header, so the old layouts (the seed's 6.x: `InUse MemUse
//! HighUse Requests Size(s)`; `SIZE LIMIT USED FREE REQUESTS FAILURES`) and today's (`Use Memory
//! Req Size(s)`; `SIZE LIMIT USED FREE REQ FAIL SLEEP XDOMAIN`) parse alike. Rows that a mail
//! client or a narrow terminal wrapped (the seed's `vmstat -z` puts its last columns on the next
//! line) are joined back: a row is complete when it has as many numbers as the header has
//! columns.

use std::collections::BTreeMap;

/// One capture: per name (malloc type or zone), its columns by lower-case header name.
pub type Sample = BTreeMap<String, BTreeMap<String, u64>>;

/// The column every `vmstat -m` row is reduced to for growth: bytes in use.
pub const MALLOC_BYTES: &str = "memuse";
/// The `vmstat -z` columns compared across captures.
pub const ZONE_USED: &str = "used";
pub const ZONE_FAILURES: &str = "failures";

/// Header names of the same thing across FreeBSD versions, mapped to one key.
fn canonical(column: &str) -> String {
    match column.to_ascii_lowercase().as_str() {
        "use" | "inuse" => "inuse".into(),
        "memory" | "memuse" => MALLOC_BYTES.into(),
        "req" | "requests" => "requests".into(),
        "fail" | "failures" => ZONE_FAILURES.into(),
        "sleep" | "sleeps" => "sleeps".into(),
        other => other.into(),
    }
}

/// `30161K` → bytes; `-` (no high-water mark kept) → `None`.
fn amount(token: &str) -> Option<u64> {
    super::size_bytes(token)
}

fn is_amount(token: &str) -> bool {
    token == "-" || amount(token).is_some()
}

/// The size buckets column: `16,32,64` (or empty).
fn is_sizes(token: &str) -> bool {
    !token.is_empty()
        && token
            .split(',')
            .all(|s| s.is_empty() || s.parse::<u64>().is_ok())
}

/// `vmstat -m`: `Type <numeric columns...> Size(s)`. Type names may hold blanks (`CAM dev
/// queue`), so a row is read from its right: the sizes, then the numeric columns.
pub fn parse_malloc(text: &str) -> Sample {
    let mut out = Sample::new();
    let mut columns: Option<Vec<String>> = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"Type") {
            columns = Some(
                words[1..]
                    .iter()
                    .filter(|w| !w.starts_with("Size"))
                    .map(|w| canonical(w))
                    .collect(),
            );
            continue;
        }
        let Some(cols) = &columns else { continue };
        if let Some((name, values)) = malloc_row(&words, cols) {
            out.insert(name, values);
        }
    }
    out
}

fn malloc_row(words: &[&str], cols: &[String]) -> Option<(String, BTreeMap<String, u64>)> {
    let n = cols.len();
    // With or without the trailing sizes column (a type never used has none).
    for sizes in [1usize, 0] {
        if words.len() < n + sizes + 1 {
            continue;
        }
        let end = words.len() - sizes;
        if sizes == 1 && !is_sizes(words[end]) {
            continue;
        }
        let nums = &words[end - n..end];
        if !nums.iter().all(|w| is_amount(w)) {
            continue;
        }
        let name = words[..end - n].join(" ");
        if name.is_empty() || name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let values = cols
            .iter()
            .zip(nums)
            .filter_map(|(c, w)| Some((c.clone(), amount(w)?)))
            .collect();
        return Some((name, values));
    }
    None
}

/// `vmstat -z`: `ITEM SIZE LIMIT USED FREE ...`, rows `name: n, n, n, ...`, possibly wrapped.
pub fn parse_zones(text: &str) -> Sample {
    let mut out = Sample::new();
    let mut columns: Vec<String> = Vec::new();
    let mut in_header = false;
    let mut row: Option<(String, Vec<u64>)> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("ITEM") {
            columns = trimmed.split_whitespace().skip(1).map(canonical).collect();
            in_header = true;
            continue;
        }
        if columns.is_empty() || trimmed.is_empty() {
            continue;
        }
        // The header's own wrapped words (the seed's `FAILURES` on a line of its own).
        if in_header && !trimmed.contains(':') && !trimmed.starts_with(|c: char| c.is_ascii_digit())
        {
            columns.extend(trimmed.split_whitespace().map(canonical));
            continue;
        }
        in_header = false;
        let numbers_part = match &row {
            Some((_, values)) if values.len() < columns.len() => trimmed,
            _ => {
                let Some((name, rest)) = split_zone_name(trimmed) else {
                    continue;
                };
                row = Some((name, Vec::new()));
                rest
            }
        };
        if let Some((name, values)) = row.as_mut() {
            values.extend(
                numbers_part
                    .split(',')
                    .map(str::trim)
                    .filter(|w| !w.is_empty())
                    .filter_map(|w| w.parse::<u64>().ok()),
            );
            if values.len() >= columns.len() {
                let map = columns
                    .iter()
                    .cloned()
                    .zip(values.iter().copied())
                    .collect();
                out.insert(name.clone(), map);
            }
        }
    }
    out
}

/// `128 Bucket:   524, 0, ...` → (`128 Bucket`, the numbers). The name ends at the last colon
/// that only numbers follow (names may hold blanks and digits).
fn split_zone_name(line: &str) -> Option<(String, &str)> {
    let at = line.rfind(':')?;
    let rest = &line[at + 1..];
    let numeric = rest
        .chars()
        .all(|c| c.is_ascii_digit() || c == ',' || c.is_whitespace());
    (numeric && at > 0).then(|| (line[..at].trim().to_string(), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_sizes() {
        assert_eq!(amount("30161K"), Some(30161 * 1024));
        assert_eq!(amount("12"), Some(12));
        assert_eq!(amount("-"), None);
        assert!(is_amount("-"));
        assert!(is_sizes("16,32,64") && is_sizes("128") && !is_sizes("K"));
    }

    #[test]
    fn zone_names_with_blanks_and_digits() {
        assert_eq!(
            split_zone_name("128 Bucket:  524,  0,").map(|(n, _)| n),
            Some("128 Bucket".into())
        );
        assert_eq!(split_zone_name("no colon here"), None);
    }
}
