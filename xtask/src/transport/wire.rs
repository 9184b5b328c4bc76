//! What the serial shell types and what it reads back, as pure functions (no I/O), so the
//! framing can be tested without a guest.
//!
//! A command runs between two markers that carry a per-session nonce:
//!
//! ```text
//! KSB<nonce>                 (start)
//! ...output...
//! KSE<nonce> <status> <status>  (end: the status twice, so a dropped digit shows)
//! ```
//!
//! The typed line builds the markers with `printf` from separate words, so the shell's own
//! echo (if any) never contains them. Files travel as base64 chunks, each checked by SHA-256
//! in the guest.

use base64::Engine;

/// Raw bytes per upload chunk: 32 KiB is about 44 KiB of base64, small enough for the guest
/// tty's buffers (the harness waits for each chunk's checksum before sending the next).
pub const UPLOAD_CHUNK: usize = 32 * 1024;
/// Raw bytes per download chunk: small, so a line that loses bytes now and then still lets
/// most chunks through intact.
pub const DOWNLOAD_CHUNK: usize = 512;
/// base64 line length in heredocs (the tty's canonical mode limits a line to 4095 bytes).
const B64_LINE: usize = 76;

/// Quotes a word for the guest's POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The text to type to run `script` (one or more shell lines) between markers.
pub fn wrap_command(nonce: &str, script: &str) -> String {
    let mut t = format!("printf 'KSB%s\\n' {nonce}\n");
    t.push_str(script.trim_end_matches('\n'));
    t.push('\n');
    t.push_str("KS_RC=$?; ");
    t.push_str(&requery(nonce));
    t
}

/// Asks the shell again for the last command's status (when the end marker was damaged). The
/// status is kept in `KS_RC`, set right after the command.
pub fn requery(nonce: &str) -> String {
    format!("printf 'KSE%s %s %s\\n' {nonce} \"$KS_RC\" \"$KS_RC\"\n")
}

/// A line of output, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Start,
    End(i32),
    Output(&'a str),
}

/// Classifies one console line (without its line end) for the command with `nonce`. Kernel
/// messages may be glued in front of a marker; a damaged end marker counts as output.
pub fn classify<'a>(line: &'a str, nonce: &str) -> Line<'a> {
    let line = line.trim_end_matches('\r');
    if line.ends_with(&format!("KSB{nonce}")) {
        return Line::Start;
    }
    let end = format!("KSE{nonce} ");
    if let Some(pos) = line.find(&end) {
        let mut words = line[pos + end.len()..].split(' ');
        if let (Some(a), Some(b), None) = (words.next(), words.next(), words.next()) {
            if a == b {
                if let Ok(rc) = a.parse::<i32>() {
                    return Line::End(rc);
                }
            }
        }
    }
    Line::Output(line)
}

/// SHA-256, hex.
pub use crate::host::sha256_hex;

/// The script that writes one base64 chunk to `path` in the guest and prints its SHA-256.
pub fn upload_chunk_script(path: &str, chunk: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(chunk);
    let mut s = format!("base64 -d > {} <<'KSEOF'\n", sh_quote(path));
    for line in b64.as_bytes().chunks(B64_LINE) {
        s.push_str(std::str::from_utf8(line).unwrap());
        s.push('\n');
    }
    s.push_str("KSEOF\n");
    s.push_str(&verify_script(path));
    s
}

/// Prints the SHA-256 of `path` in the guest.
pub fn verify_script(path: &str) -> String {
    format!("sha256sum {}\n", sh_quote(path))
}

/// The SHA-256 a `sha256sum` line reports for `path`, if the line is intact.
pub fn parse_sha256_line<'a>(lines: &[&'a str], path: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| {
        let l = l.trim_end_matches('\r');
        let (hash, name) = l.split_once("  ")?;
        let ok = name == path && hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then_some(hash)
    })
}

/// Prints chunk `index` of `path` (of [`DOWNLOAD_CHUNK`] bytes) as its SHA-256 line, then base64.
pub fn download_chunk_script(path: &str, index: usize, scratch: &str) -> String {
    format!(
        "dd if={} of={} bs={DOWNLOAD_CHUNK} skip={index} count=1 2>/dev/null\nsha256sum {}\nbase64 {}\n",
        sh_quote(path),
        sh_quote(scratch),
        sh_quote(scratch),
        sh_quote(scratch)
    )
}

/// Decodes a downloaded chunk from its output lines and checks it against the SHA-256 line.
/// `None` when anything was damaged on the way (the caller asks again).
pub fn decode_download_chunk(lines: &[&str], scratch: &str) -> Option<Vec<u8>> {
    let want = parse_sha256_line(lines, scratch)?;
    let b64: String = lines
        .iter()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.contains("  ") && !l.is_empty())
        .collect();
    let data = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .ok()?;
    (sha256_hex(&data) == want).then_some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_text_never_contains_a_marker() {
        let t = wrap_command("n0nce", "echo hi");
        assert!(!t.contains("KSBn0nce"));
        assert!(!t.contains("KSEn0nce"));
        assert!(t.contains("echo hi\n"));
    }

    #[test]
    fn markers_classify() {
        assert_eq!(classify("KSBab12\r", "ab12"), Line::Start);
        assert_eq!(classify("KSEab12 0 0", "ab12"), Line::End(0));
        assert_eq!(
            classify("[ 1.0] x: yKSEab12 137 137\r", "ab12"),
            Line::End(137)
        );
        // A dropped digit or a damaged nonce is not an end marker.
        assert_eq!(
            classify("KSEab12 12 2", "ab12"),
            Line::Output("KSEab12 12 2")
        );
        assert_eq!(classify("KSEab2 0 0", "ab12"), Line::Output("KSEab2 0 0"));
        assert_eq!(classify("KSEab12 0", "ab12"), Line::Output("KSEab12 0"));
        assert_eq!(classify("hello", "ab12"), Line::Output("hello"));
    }

    #[test]
    fn upload_chunk_is_heredoc_of_short_lines() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let s = upload_chunk_script("/run/kstorm/up/c0", &data);
        assert!(s.lines().all(|l| l.len() < 4095));
        let body: String = s.lines().skip(1).take_while(|l| *l != "KSEOF").collect();
        let back = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        assert_eq!(back, data);
        assert!(s.ends_with("sha256sum '/run/kstorm/up/c0'\n"));
    }

    #[test]
    fn sha_lines_must_be_whole() {
        let h = sha256_hex(b"abc");
        let good = format!("{h}  /x/c0");
        assert_eq!(
            parse_sha256_line(&[good.as_str()], "/x/c0"),
            Some(h.as_str())
        );
        let short = format!("{}  /x/c0", &h[1..]);
        assert_eq!(parse_sha256_line(&[short.as_str()], "/x/c0"), None);
        assert_eq!(parse_sha256_line(&[good.as_str()], "/x/c1"), None);
    }

    #[test]
    fn download_chunk_round_trip_and_damage() {
        let data = b"KSTORM1 cell 0 00000000 {}\n".repeat(40);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        let sha = format!("{}  /s", sha256_hex(&data));
        let mut lines: Vec<String> = vec![sha];
        lines.extend(
            b64.as_bytes()
                .chunks(76)
                .map(|c| String::from_utf8(c.to_vec()).unwrap()),
        );
        let refs: Vec<&str> = lines.iter().map(|s| s.as_str()).collect();
        assert_eq!(decode_download_chunk(&refs, "/s").unwrap(), data);
        // One byte dropped anywhere: rejected, never a wrong result.
        for i in 0..lines[1].len() {
            let mut damaged = lines.clone();
            damaged[1].remove(i);
            let refs: Vec<&str> = damaged.iter().map(|s| s.as_str()).collect();
            assert!(decode_download_chunk(&refs, "/s").is_none(), "byte {i}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
