//! Turning raw console bytes of one line into text fit for matching: serial consoles add
//! `\r`, terminals add ANSI colour and cursor escapes, some firmware pads with NULs.

/// Cleans one line (without its `\n`): drops trailing `\r`, keeps what follows an interior `\r`
/// (a terminal would have overwritten the rest), removes ANSI escape sequences, NULs and other
/// control characters, and decodes UTF-8 lossily.
pub fn clean(raw: &[u8]) -> String {
    let mut raw = raw;
    while let [rest @ .., b'\r'] = raw {
        raw = rest;
    }
    if let Some(i) = memchr::memrchr(b'\r', raw) {
        raw = &raw[i + 1..];
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == 0x1b {
            i = skip_escape(raw, i);
            continue;
        }
        if b == b'\t' || b >= 0x20 && b != 0x7f {
            out.push(b);
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Returns the index just past the escape sequence starting at `raw[i] == ESC`.
fn skip_escape(raw: &[u8], i: usize) -> usize {
    match raw.get(i + 1) {
        // CSI: ESC [ parameters... final byte in 0x40..=0x7e.
        Some(b'[') => {
            let mut j = i + 2;
            while j < raw.len() && !(0x40..=0x7e).contains(&raw[j]) {
                j += 1;
            }
            (j + 1).min(raw.len())
        }
        // OSC: ESC ] ... terminated by BEL or ESC \.
        Some(b']') => {
            let mut j = i + 2;
            while j < raw.len() {
                if raw[j] == 0x07 {
                    return j + 1;
                }
                if raw[j] == 0x1b && raw.get(j + 1) == Some(&b'\\') {
                    return j + 2;
                }
                j += 1;
            }
            raw.len()
        }
        // Two-byte escapes (ESC c, ESC 7, ...).
        Some(_) => i + 2,
        None => i + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn strips_serial_and_terminal_noise() {
        assert_eq!(clean(b"abc\r\r"), "abc");
        assert_eq!(clean(b"progress 10%\rKernel panic"), "Kernel panic");
        assert_eq!(clean(b"\x1b[0;31mred\x1b[0m text"), "red text");
        assert_eq!(clean(b"\x1b]0;title\x07after"), "after");
        assert_eq!(clean(b"\0\0\0panic: x\0"), "panic: x");
        assert_eq!(clean(b"bad \xff utf8"), "bad \u{fffd} utf8");
        assert_eq!(clean(b"\x1b[12"), "");
    }
}
