//! The ssh transport: libssh2 (the `ssh2` crate) through QEMU's user-network port forward.
//!
//! Files go up through an exec channel running `cat > FILE` and are checked with `sha256sum`
//! (the image's dropbear has no sftp or scp server). Reads use a short libssh2 timeout so a
//! long-running command can be interrupted when the cell ends.

use super::{wire, Faults, TResult, Transport, TransportError, TransportStats};
use crate::config::SshSpec;
use crate::config::TransportKind;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// libssh2's error code for a blocking call that timed out.
const LIBSSH2_ERROR_TIMEOUT: i32 = -9;
/// Per-call timeout: how often a blocked read looks at the stop flag.
const POLL_MS: u32 = 250;

pub struct SshTransport {
    addr: SocketAddr,
    spec: SshSpec,
    /// Folder `spec.key` is relative to.
    key_dir: PathBuf,
    faults: Faults,
    stop: Arc<AtomicBool>,
    started: Instant,
    session: Option<ssh2::Session>,
    stats: TransportStats,
}

impl SshTransport {
    pub fn new(
        host_port: u16,
        spec: SshSpec,
        key_dir: PathBuf,
        faults: Faults,
        stop: Arc<AtomicBool>,
        started: Instant,
    ) -> SshTransport {
        SshTransport {
            addr: SocketAddr::from(([127, 0, 0, 1], host_port)),
            spec,
            key_dir,
            faults,
            stop,
            started,
            session: None,
            stats: TransportStats {
                kind: TransportKind::Ssh,
                ..Default::default()
            },
        }
    }

    fn session(&self) -> TResult<&ssh2::Session> {
        self.session
            .as_ref()
            .ok_or_else(|| TransportError::Lost("not connected".into()))
    }

    /// One connection attempt: TCP, handshake. `Err` means "not up yet", retried by `connect`.
    fn try_handshake(&self) -> Result<ssh2::Session, String> {
        let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        let mut s = ssh2::Session::new().map_err(|e| e.to_string())?;
        s.set_tcp_stream(tcp);
        // Slirp accepts at once and closes when the guest's port is not listening yet; a slow
        // TCG guest can take seconds to answer the key exchange.
        s.set_timeout(10_000);
        s.handshake().map_err(|e| e.to_string())?;
        Ok(s)
    }

    fn authenticate(&self, s: &ssh2::Session) -> TResult<()> {
        let user = &self.spec.user;
        let result = match (&self.spec.password, &self.spec.key) {
            (Some(pw), _) => s.userauth_password(user, pw),
            (None, Some(key)) => s.userauth_pubkey_file(user, None, &self.key_dir.join(key), None),
            (None, None) => unreachable!("config requires password or key"),
        };
        let how = if self.spec.password.is_some() {
            "password"
        } else {
            "key"
        };
        match result {
            Ok(()) if s.authenticated() => Ok(()),
            Ok(()) => Err(TransportError::Refused(format!(
                "ssh authentication failed for {user}@{} ({how} from the image's transport.ssh)",
                self.addr
            ))),
            Err(e) if e.code() == ssh2::ErrorCode::Session(-18) => Err(TransportError::Refused(format!(
                "ssh authentication failed for {user}@{} ({how} from the image's transport.ssh): {e}",
                self.addr
            ))),
            Err(e) => Err(classify(e, "authenticating")),
        }
    }

    fn check_stop(&self) -> TResult<()> {
        if self.stop.load(Ordering::SeqCst) {
            Err(TransportError::Stopped)
        } else {
            Ok(())
        }
    }

    /// Runs `command`, feeding `input` to its stdin; collects stdout lines into `on_line`.
    fn exec(
        &mut self,
        command: &str,
        input: Option<&[u8]>,
        on_line: &mut dyn FnMut(&str),
    ) -> TResult<i32> {
        let faults = self.faults.clone();
        let s = self.session()?.clone();
        let mut ch = retry_timeout(&self.stop, || s.channel_session())
            .map_err(|e| e.unwrap_or_else(|e| classify(e, "opening a channel")))?;
        retry_timeout(&self.stop, || ch.exec(command))
            .map_err(|e| e.unwrap_or_else(|e| classify(e, "starting a command")))?;
        if let Some(data) = input {
            let mut off = 0;
            while off < data.len() {
                self.check_stop()?;
                match ch.write(&data[off..]) {
                    Ok(n) => off += n,
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => return Err(TransportError::Lost(format!("writing: {e}"))),
                }
            }
            retry_timeout(&self.stop, || ch.send_eof())
                .map_err(|e| e.unwrap_or_else(|e| classify(e, "closing stdin")))?;
        }
        let mut partial = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        let mut fault_fired = false;
        loop {
            self.check_stop()?;
            match ch.read(&mut buf) {
                Ok(0) => {
                    if ch.eof() {
                        break;
                    }
                }
                Ok(n) => {
                    partial.extend_from_slice(&buf[..n]);
                    while let Some(pos) = partial.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=pos).collect();
                        let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                        on_line(&text);
                        if !fault_fired && text.contains("\"t\":\"start\"") {
                            if let Some(cmd) = &faults.ssh_on_start {
                                fault_fired = true;
                                // Test-only fault: fire and forget on a second channel.
                                if let Ok(mut c2) = s.channel_session() {
                                    let _ = c2.exec(cmd);
                                }
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(TransportError::Lost(format!("reading output: {e}"))),
            }
        }
        if !partial.is_empty() {
            on_line(&String::from_utf8_lossy(&partial));
        }
        // A channel closed by the server sends its exit status first; a dead connection
        // fails here instead.
        retry_timeout(&self.stop, || ch.wait_close()).map_err(|e| {
            e.unwrap_or_else(|e| {
                TransportError::Lost(format!(
                    "the connection died before the command's exit status: {e}"
                ))
            })
        })?;
        if let Ok(Some(sig)) = ch.exit_signal().map(|s| s.exit_signal) {
            return Ok(128 + signal_number(&sig));
        }
        ch.exit_status()
            .map_err(|e| TransportError::Lost(format!("no exit status: {e}")))
    }
}

impl Transport for SshTransport {
    fn connect(&mut self, deadline: Instant) -> TResult<()> {
        let mut backoff = Duration::from_millis(200);
        let mut last = String::from("no attempt");
        loop {
            self.check_stop()?;
            if Instant::now() >= deadline {
                return Err(TransportError::Deadline(format!(
                    "sshd on {} did not answer before the boot deadline ({} attempts; last: {last})",
                    self.addr, self.stats.attempts
                )));
            }
            self.stats.attempts += 1;
            match self.try_handshake() {
                Ok(s) => {
                    self.authenticate(&s)?;
                    s.set_timeout(POLL_MS);
                    s.set_keepalive(true, 5);
                    self.session = Some(s);
                    self.stats.connect_s = Some(self.started.elapsed().as_secs_f64());
                    return Ok(());
                }
                Err(e) => last = e,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(backoff.min(left));
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn upload(&mut self, data: &[u8], path: &str, mode: u32) -> TResult<()> {
        let t = Instant::now();
        let q = wire::sh_quote;
        let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or(".");
        let cmd = format!(
            "mkdir -p {} && cat > {} && chmod {mode:o} {} && sha256sum {}",
            q(dir),
            q(path),
            q(path),
            q(path)
        );
        let mut lines = Vec::new();
        let status = self.exec(&cmd, Some(data), &mut |l| lines.push(l.to_string()))?;
        if status != 0 {
            return Err(TransportError::Refused(format!(
                "upload of {path} failed (status {status}): {}",
                lines.join(" | ")
            )));
        }
        let refs: Vec<&str> = lines.iter().map(|s| s.as_str()).collect();
        let want = wire::sha256_hex(data);
        if wire::parse_sha256_line(&refs, path) != Some(want.as_str()) {
            return Err(TransportError::Refused(format!(
                "upload of {path}: the guest's SHA-256 does not match"
            )));
        }
        self.stats.uploaded_bytes += data.len() as u64;
        self.stats.upload_s += t.elapsed().as_secs_f64();
        Ok(())
    }

    fn run(&mut self, command: &str, on_line: &mut dyn FnMut(&str)) -> TResult<i32> {
        self.exec(command, None, on_line)
    }

    fn download(&mut self, path: &str) -> TResult<Vec<u8>> {
        let s = self.session()?.clone();
        let mut ch = retry_timeout(&self.stop, || s.channel_session())
            .map_err(|e| e.unwrap_or_else(|e| classify(e, "opening a channel")))?;
        retry_timeout(&self.stop, || {
            ch.exec(&format!("cat {}", wire::sh_quote(path)))
        })
        .map_err(|e| e.unwrap_or_else(|e| classify(e, "starting cat")))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            self.check_stop()?;
            match ch.read(&mut buf) {
                Ok(0) if ch.eof() => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(TransportError::Lost(format!("downloading {path}: {e}"))),
            }
        }
        retry_timeout(&self.stop, || ch.wait_close())
            .map_err(|e| e.unwrap_or_else(|e| classify(e, "downloading")))?;
        match ch.exit_status() {
            Ok(0) => Ok(out),
            Ok(st) => Err(TransportError::Refused(format!(
                "cat {path} exited with {st}"
            ))),
            Err(e) => Err(TransportError::Lost(format!("downloading {path}: {e}"))),
        }
    }

    fn stats(&self) -> TransportStats {
        self.stats.clone()
    }
}

/// Calls `f` until it does not time out (the session has a short timeout so the stop flag is
/// looked at). `Err(Ok(Stopped))` when stopped, `Err(Err(e))` for a real error.
fn retry_timeout<T>(
    stop: &AtomicBool,
    mut f: impl FnMut() -> Result<T, ssh2::Error>,
) -> Result<T, Result<TransportError, ssh2::Error>> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(Ok(TransportError::Stopped));
        }
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if e.code() == ssh2::ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT) => {}
            Err(e) => return Err(Err(e)),
        }
    }
}

/// libssh2 errors after login mean the connection is gone.
fn classify(e: ssh2::Error, doing: &str) -> TransportError {
    TransportError::Lost(format!("{doing}: {e}"))
}

fn signal_number(name: &str) -> i32 {
    match name {
        "HUP" => 1,
        "INT" => 2,
        "KILL" => 9,
        "SEGV" => 11,
        "PIPE" => 13,
        "TERM" => 15,
        _ => 0,
    }
}

/// A free TCP port on 127.0.0.1 (another process may take it before QEMU does: the cell
/// retries with a new one when QEMU cannot bind it).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
