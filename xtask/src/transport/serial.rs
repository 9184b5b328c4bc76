//! The serial-shell transport: a login on the guest's serial console (QEMU's stdin and stdout).
//!
//! The console also carries kernel messages, and a real serial line can lose bytes, so nothing
//! read back is trusted without a check: command output comes between markers carrying a
//! nonce ([`wire`]), the exit status is printed twice and asked for again when its marker was
//! damaged, files travel as base64 chunks each checked by SHA-256 in the guest and resent (or
//! re-checked) until they match, and downloads are checked the same way.

use super::{wire, Faults, TResult, Transport, TransportError, TransportStats, GUEST_DIR};
use crate::config::SerialSpec;
use crate::config::TransportKind;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Attempts per chunk before the upload is given up.
const CHUNK_ATTEMPTS: u32 = 8;
/// With no output for this long and no end marker, ask for the status again.
const REQUERY_IDLE: Duration = Duration::from_secs(5);

pub struct SerialTransport {
    input: Box<dyn Write + Send>,
    console: mpsc::Receiver<Vec<u8>>,
    spec: SerialSpec,
    session_nonce: String,
    commands: u64,
    /// Console bytes read but not consumed yet.
    buf: Vec<u8>,
    faults: Faults,
    /// Bytes read since login (for the test-only drop fault).
    read_count: u64,
    logged_in: bool,
    stop: Arc<AtomicBool>,
    started: Instant,
    stats: TransportStats,
}

impl SerialTransport {
    /// `input` writes to the console; `console` receives what the console printed from boot on.
    pub fn new(
        input: Box<dyn Write + Send>,
        console: mpsc::Receiver<Vec<u8>>,
        spec: SerialSpec,
        faults: Faults,
        stop: Arc<AtomicBool>,
        started: Instant,
    ) -> SerialTransport {
        let session_nonce: String = (0..8)
            .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
            .collect();
        SerialTransport {
            input,
            console,
            spec,
            session_nonce,
            commands: 0,
            buf: Vec::new(),
            faults,
            read_count: 0,
            logged_in: false,
            stop,
            started,
            stats: TransportStats {
                kind: TransportKind::Serial,
                ..Default::default()
            },
        }
    }

    fn prompt(&self) -> String {
        format!("KSP{}> ", self.session_nonce)
    }

    fn send(&mut self, text: &str) -> TResult<()> {
        self.input
            .write_all(text.as_bytes())
            .and_then(|_| self.input.flush())
            .map_err(|e| TransportError::Lost(format!("writing to the console: {e}")))
    }

    /// Waits up to `wait` for console bytes; false when none came.
    fn read_more(&mut self, wait: Duration) -> TResult<bool> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(TransportError::Stopped);
        }
        match self.console.recv_timeout(wait) {
            Ok(bytes) => {
                for b in bytes {
                    self.read_count += u64::from(self.logged_in);
                    // Test-only fault: a line that loses bytes.
                    let drop = self.logged_in
                        && self
                            .faults
                            .serial_drop_every
                            .is_some_and(|n| self.read_count.is_multiple_of(n));
                    if !drop {
                        self.buf.push(b);
                    }
                }
                Ok(true)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(false),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(TransportError::Lost(
                "the console closed (QEMU exited)".into(),
            )),
        }
    }

    fn buf_text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// Reads until the console shows `needle` (consuming up to it) or `until`.
    fn wait_for(&mut self, needles: &[&str], until: Instant) -> TResult<Option<usize>> {
        loop {
            let text = self.buf_text();
            if let Some((i, pos, len)) = needles
                .iter()
                .enumerate()
                .filter_map(|(i, n)| text.find(n).map(|p| (i, p, n.len())))
                .min_by_key(|(_, p, _)| *p)
            {
                let consumed = text[..pos + len].len();
                self.buf.drain(..consumed.min(self.buf.len()));
                return Ok(Some(i));
            }
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            self.read_more((until - now).min(Duration::from_millis(100)))?;
        }
    }

    /// Reads until the console has been silent for `quiet` (or `until`).
    fn wait_quiet(&mut self, quiet: Duration, until: Instant) -> TResult<()> {
        while Instant::now() < until {
            if !self.read_more(quiet.min(until.saturating_duration_since(Instant::now())))? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Runs `script` between markers; returns its status and output lines.
    fn command(&mut self, script: &str) -> TResult<(i32, Vec<String>)> {
        let mut lines = Vec::new();
        let rc = self.command_streaming(script, &mut |l| lines.push(l.to_string()))?;
        Ok((rc, lines))
    }

    fn command_streaming(&mut self, script: &str, on_line: &mut dyn FnMut(&str)) -> TResult<i32> {
        self.commands += 1;
        let nonce = format!("{}{}", self.session_nonce, self.commands);
        self.buf.clear();
        self.send(&wire::wrap_command(&nonce, script))?;
        let prompt = self.prompt();
        let mut last_data = Instant::now();
        let mut last_requery = Instant::now();
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&raw[..raw.len() - 1]).into_owned();
                let line = line.trim_end_matches('\r');
                // The shell prints its prompt before each line of a script, with no newline.
                let mut line = line;
                while let Some(rest) = line.strip_prefix(prompt.as_str()) {
                    line = rest;
                }
                match wire::classify(line, &nonce) {
                    wire::Line::Start => {}
                    wire::Line::End(rc) => return Ok(rc),
                    wire::Line::Output(l) => on_line(l),
                }
            }
            // The shell is idle at its prompt (or silent) with no intact end marker: the marker
            // was damaged on the way. Ask again; the status is still in KS_RC.
            let idle_at_prompt = self.buf_text().ends_with(&prompt);
            let since = last_requery.elapsed();
            if (idle_at_prompt
                && since > Duration::from_secs(1)
                && last_data.elapsed() > Duration::from_secs(1))
                || (last_data.elapsed() > REQUERY_IDLE && since > REQUERY_IDLE)
            {
                self.buf.clear();
                self.stats.requeries += 1;
                last_requery = Instant::now();
                self.send(&wire::requery(&nonce))?;
            }
            if self.read_more(Duration::from_millis(100))? {
                last_data = Instant::now();
            }
        }
    }

    /// Sends one chunk until the guest's SHA-256 of it matches.
    fn upload_chunk(&mut self, path: &str, chunk: &[u8]) -> TResult<()> {
        let want = wire::sha256_hex(chunk);
        let mut resend = true;
        for attempt in 0..CHUNK_ATTEMPTS {
            if attempt > 0 {
                self.stats.retries += 1;
            }
            let script = if resend {
                wire::upload_chunk_script(path, chunk)
            } else {
                wire::verify_script(path)
            };
            let (_, lines) = self.command(&script)?;
            let refs: Vec<&str> = lines.iter().map(|s| s.as_str()).collect();
            match wire::parse_sha256_line(&refs, path) {
                Some(got) if got == want => return Ok(()),
                // The chunk arrived damaged: send it again.
                Some(_) => resend = true,
                // The answer was damaged: the chunk may be fine, check it again (resumable).
                None => resend = false,
            }
        }
        Err(TransportError::Refused(format!(
            "{path}: checksum still wrong after {CHUNK_ATTEMPTS} attempts"
        )))
    }

    /// Waits up to 10 s for the login prompt; false after poking the console for a new one
    /// (the prompt may have scrolled by with kernel messages), an error at the boot deadline.
    fn await_login_prompt(&mut self, login_prompt: &str, deadline: Instant) -> TResult<bool> {
        let poke = Instant::now() + Duration::from_secs(10);
        match self.wait_for(&[login_prompt], poke.min(deadline))? {
            Some(_) => Ok(true),
            None if Instant::now() >= deadline => Err(TransportError::Deadline(format!(
                "no {login_prompt:?} prompt on the serial console before the boot deadline"
            ))),
            None => {
                self.send("\r")?;
                Ok(false)
            }
        }
    }

    /// Types the user name and, when the image has one, the password once asked for it.
    /// Returns until when login's answer is awaited, or `None` when login went back to its
    /// prompt instead of asking for the password (start over).
    fn send_credentials(
        &mut self,
        user: &str,
        login_prompt: &str,
        deadline: Instant,
    ) -> TResult<Option<Instant>> {
        // getty and login flush the tty's input after printing their prompts, and a TCG
        // guest can take a while to get there: answer once the console is quiet.
        self.wait_quiet(Duration::from_secs(1), deadline)?;
        self.buf.clear();
        self.send(&format!("{user}\n"))?;
        let until = (Instant::now() + Duration::from_secs(20)).min(deadline);
        if let Some(pw) = self.spec.password.clone() {
            match self.wait_for(&["assword:", login_prompt], until)? {
                Some(0) => {
                    self.wait_quiet(Duration::from_secs(1), deadline)?;
                    self.send(&format!("{pw}\n"))?;
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(until))
    }

    /// Sets up the shell (no echo, our prompt) and waits for its prompt; the index of what
    /// answered among (shell prompt, "incorrect", login prompt), `None` by `until`.
    fn start_shell(
        &mut self,
        prompt: &str,
        login_prompt: &str,
        until: Instant,
    ) -> TResult<Option<usize>> {
        // The prompt is built from two quoted words so the echo of this line differs from it.
        let setup = format!("stty -echo; PS2=''; PS1='KSP''{}> '\n", self.session_nonce);
        self.send(&setup)?;
        // A busy guest may flush what was typed before login read it: when nothing answers,
        // type the password (if login still waits for it) and the setup line again. If the
        // first answer did get through, the shell runs the repeat as a harmless command.
        let mut answer = None;
        for _ in 0..4 {
            let step = (Instant::now() + Duration::from_secs(5)).min(until);
            answer = self.wait_for(&[prompt, "incorrect", login_prompt], step)?;
            if answer.is_some() || Instant::now() >= until {
                break;
            }
            self.stats.retries += 1;
            if let Some(pw) = self.spec.password.clone() {
                self.send(&format!("{pw}\n"))?;
            }
            self.send(&setup)?;
        }
        Ok(answer)
    }
}

impl Transport for SerialTransport {
    fn connect(&mut self, deadline: Instant) -> TResult<()> {
        let user = self.spec.user.clone();
        let login_prompt = self.spec.prompt.clone();
        let prompt = self.prompt();
        let mut refusals = 0;
        loop {
            self.stats.attempts += 1;
            if !self.await_login_prompt(&login_prompt, deadline)? {
                continue;
            }
            let Some(until) = self.send_credentials(&user, &login_prompt, deadline)? else {
                continue;
            };
            let answer = self.start_shell(&prompt, &login_prompt, until)?;
            match answer {
                Some(0) => break,
                Some(1) => {
                    refusals += 1;
                    if refusals >= 2 {
                        return Err(TransportError::Refused(format!(
                            "login as {user} on the serial console was refused (Login incorrect): check the password in the image's transport.serial-shell"
                        )));
                    }
                }
                // Back at the login prompt: the answers were swallowed; start over.
                Some(_) => self.buf.splice(0..0, login_prompt.bytes()).for_each(drop),
                None if Instant::now() >= deadline => {
                    return Err(TransportError::Deadline(
                        "no shell prompt after logging in on the serial console".into(),
                    ))
                }
                None => {
                    return Err(TransportError::Refused(format!(
                        "no shell prompt within 20 s of logging in as {user} on the serial console"
                    )))
                }
            }
        }
        self.logged_in = true;
        self.stats.connect_s = Some(self.started.elapsed().as_secs_f64());
        Ok(())
    }

    fn upload(&mut self, data: &[u8], path: &str, mode: u32) -> TResult<()> {
        let t = Instant::now();
        let q = wire::sh_quote;
        let parts = format!("{GUEST_DIR}/up");
        let (rc, lines) = self.command(&format!("rm -rf {p}; mkdir -p {p}", p = q(&parts)))?;
        if rc != 0 {
            return Err(TransportError::Refused(format!(
                "mkdir {parts} failed: {}",
                lines.join(" | ")
            )));
        }
        let mut chunks = 0;
        for (i, chunk) in data.chunks(wire::UPLOAD_CHUNK).enumerate() {
            self.upload_chunk(&format!("{parts}/c{i:05}"), chunk)?;
            chunks += 1;
        }
        let want = wire::sha256_hex(data);
        // A glob, not a list: the tty cuts lines at 4095 bytes. The names are zero-padded, so
        // the glob's order is the chunks' order.
        let sources = if chunks == 0 {
            "/dev/null".to_string()
        } else {
            format!("{}/c*", q(&parts))
        };
        let join = format!(
            "cat {sources} > {f} && chmod {mode:o} {f} && rm -rf {p}\n{}",
            wire::verify_script(path),
            f = q(path),
            p = q(&parts)
        );
        let mut script = join;
        for attempt in 0..CHUNK_ATTEMPTS {
            if attempt > 0 {
                self.stats.retries += 1;
            }
            let (_, lines) = self.command(&script)?;
            let refs: Vec<&str> = lines.iter().map(|s| s.as_str()).collect();
            match wire::parse_sha256_line(&refs, path) {
                Some(got) if got == want => {
                    self.stats.uploaded_bytes += data.len() as u64;
                    self.stats.upload_s += t.elapsed().as_secs_f64();
                    return Ok(());
                }
                Some(got) => {
                    return Err(TransportError::Refused(format!(
                    "{path}: the guest's SHA-256 {got} is not {want} although every chunk matched"
                )))
                }
                None => script = wire::verify_script(path),
            }
        }
        Err(TransportError::Refused(format!(
            "{path}: no intact checksum after {CHUNK_ATTEMPTS} attempts"
        )))
    }

    fn run(&mut self, command: &str, on_line: &mut dyn FnMut(&str)) -> TResult<i32> {
        self.command_streaming(command, on_line)
    }

    fn download(&mut self, path: &str) -> TResult<Vec<u8>> {
        let scratch = format!("{GUEST_DIR}/dl");
        let mut out = Vec::new();
        for index in 0.. {
            let mut chunk = None;
            for attempt in 0..CHUNK_ATTEMPTS {
                if attempt > 0 {
                    self.stats.retries += 1;
                }
                let (rc, lines) =
                    self.command(&wire::download_chunk_script(path, index, &scratch))?;
                let refs: Vec<&str> = lines.iter().map(|s| s.as_str()).collect();
                if rc == 0 {
                    if let Some(data) = wire::decode_download_chunk(&refs, &scratch) {
                        chunk = Some(data);
                        break;
                    }
                }
            }
            let data = chunk.ok_or_else(|| {
                TransportError::Refused(format!(
                    "{path}: chunk {index} never arrived intact after {CHUNK_ATTEMPTS} attempts"
                ))
            })?;
            let last = data.len() < wire::DOWNLOAD_CHUNK;
            out.extend_from_slice(&data);
            if last {
                return Ok(out);
            }
        }
        unreachable!()
    }

    fn stats(&self) -> TransportStats {
        self.stats.clone()
    }
}
