//! The backend: starts QEMU for a cell and turns everything that comes back (console bytes,
//! results-port lines, the transport's output and end, QEMU's exit, Ctrl-C, the clock) into one
//! stream of [`CellEvent`]s for the monitor. It owns the threads and the QEMU process, and
//! leaves neither behind.

use super::judge::last_line;
use super::monitor::CellEvent;
use super::GuestFiles;
use crate::config::{TransportKind, TransportSpec};
use crate::error::{InfraCause, InfraError};
use crate::qemu::{self, Forward, QemuProcess, QemuSpec};
use crate::transport::{self, Faults, Transport};
use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The results port of a recorded cell, as QEMU wrote it (kept beside `console.log`).
pub const RECORDED_RESULTS: &str = "results.log";

/// How often a follower of the results file looks for more.
const FOLLOW_POLL: Duration = Duration::from_millis(20);

/// How long a recording QEMU may take to write its log's end after SIGTERM.
const RECORD_STOP_GRACE: Duration = Duration::from_secs(10);

/// What the reader threads send: events, and the ends of their streams.
enum Msg {
    Event(CellEvent),
    ConsoleClosed,
    ResultsClosed,
}

/// How a cell reaches its payload, and what it needs to.
pub struct Launch<'a> {
    pub transport: &'a TransportSpec,
    /// For transports: the payload and plan to upload.
    pub guest: Option<GuestFiles>,
    pub faults: Faults,
    /// The cell's results folder: qemu.cmd, qemu.stderr, console.log.
    pub dir: &'a Path,
    pub boot_deadline: Duration,
}

pub struct Backend {
    qemu: QemuProcess,
    rx: mpsc::Receiver<Msg>,
    backlog: VecDeque<CellEvent>,
    console_input: Option<ChildStdin>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    results_thread: Option<JoinHandle<()>>,
    /// QEMU is gone: a follower of the results file reads what is left and ends.
    results_done: Arc<AtomicBool>,
    exited: bool,
    /// A recorded QEMU is stopped cleanly, or its recording is unreadable.
    graceful_stop: bool,
    /// The command line QEMU was started with (`qemu.cmd`).
    pub argv: Vec<std::ffi::OsString>,
    pub start: Instant,
    pub stderr_log: PathBuf,
}

impl Backend {
    /// Starts QEMU and the threads that read from it.
    pub fn start(mut spec: QemuSpec, launch: Launch<'_>) -> Result<Backend> {
        // Unix socket paths are limited to 108 bytes: keep the socket in a short folder.
        let sock_dir = tempfile::Builder::new()
            .prefix("kstorm-")
            .tempdir_in("/tmp")
            .context("creating a socket folder")?;
        let pid1 = *launch.transport == TransportSpec::Pid1;
        if pid1 && spec.has_results_port() {
            choose_results_port(&mut spec, launch.dir, sock_dir.path());
        }
        let stderr_log = launch.dir.join("qemu.stderr");
        let graceful_stop = spec.record.is_some();
        let (start, mut qemu, argv) = spawn_qemu(&mut spec, &launch, &stderr_log)?;
        let (tx, rx) = mpsc::channel();
        let stdout = qemu.take_stdout().context("QEMU's stdout is not piped")?;
        let console_log = std::fs::File::create(launch.dir.join("console.log"))
            .context("creating console.log")?;
        let (tap_tx, tap_rx) = mpsc::channel();
        let tap = matches!(launch.transport, TransportSpec::SerialShell(_)).then_some(tap_tx);
        let console_tx = tx.clone();
        let mut threads = vec![std::thread::spawn(move || {
            read_console(stdout, console_log, console_tx, tap)
        })];
        let stop = Arc::new(AtomicBool::new(false));
        let results_done = Arc::new(AtomicBool::new(false));
        let mut console_input = qemu.take_stdin();
        let mut results_thread = None;
        if let Some(sock) = &spec.results_socket {
            let results = connect_results(sock, &mut qemu, &stderr_log)?;
            let tx = tx.clone();
            results_thread = Some(std::thread::spawn(move || read_results(results, tx)));
        } else if let Some(file) = spec.results_file.clone() {
            let (tx, gone) = (tx.clone(), results_done.clone());
            results_thread = Some(std::thread::spawn(move || follow_results(&file, gone, tx)));
        } else if !pid1 {
            let (t, guest) =
                guest_transport(&launch, &spec, &mut console_input, tap_rx, &stop, start)?;
            let boot_deadline = start + launch.boot_deadline;
            let tx = tx.clone();
            threads.push(std::thread::spawn(move || {
                drive(t, guest, boot_deadline, tx)
            }));
        }
        // QEMU bound the socket and the harness is connected: the folder can go.
        drop(sock_dir);
        Ok(Backend {
            qemu,
            rx,
            backlog: VecDeque::new(),
            console_input,
            stop,
            threads,
            results_thread,
            results_done,
            exited: false,
            graceful_stop,
            argv,
            start,
            stderr_log,
        })
    }

    /// The next event, waiting at most `wait` (then [`CellEvent::Tick`]).
    pub fn next(&mut self, wait: Duration) -> CellEvent {
        if let Some(e) = self.backlog.pop_front() {
            return e;
        }
        if qemu::interrupted() {
            return CellEvent::Interrupted;
        }
        if self.exited {
            return CellEvent::Tick;
        }
        match self.rx.recv_timeout(wait) {
            Ok(Msg::Event(e)) => {
                if matches!(e, CellEvent::TransportEnded { .. }) {
                    self.poke_console();
                }
                e
            }
            Ok(Msg::ResultsClosed) => CellEvent::Tick,
            Ok(Msg::ConsoleClosed) | Err(mpsc::RecvTimeoutError::Disconnected) => self.on_exit(),
            Err(mpsc::RecvTimeoutError::Timeout) => CellEvent::Tick,
        }
    }

    /// QEMU closed the console: it is exiting. What the results port still holds comes first.
    fn on_exit(&mut self) -> CellEvent {
        self.exited = true;
        let status = self.qemu.wait_for(Duration::from_secs(5));
        if status.is_some() {
            self.results_done.store(true, Ordering::SeqCst);
            if let Some(t) = self.results_thread.take() {
                // QEMU's exit closed the socket: the reader ends at once. (A QEMU that did not
                // exit is killed by `stop`, which joins the reader then.)
                let _ = t.join();
            }
        }
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Event(e) = msg {
                self.backlog.push_back(e);
            }
        }
        self.backlog.push_back(CellEvent::QemuExited(status));
        self.backlog.pop_front().unwrap_or(CellEvent::Tick)
    }

    /// A live kernel's getty echoes a carriage return, a dead one stays silent: after a
    /// transport failure this tells the monitor which.
    fn poke_console(&mut self) {
        if let Some(input) = self.console_input.as_mut() {
            let _ = input.write_all(b"\r").and_then(|_| input.flush());
        }
    }

    /// Stops QEMU and every thread; returns the events that were still on their way, and the
    /// time QEMU was gone.
    pub fn stop(mut self) -> (Vec<CellEvent>, Instant) {
        self.stop.store(true, Ordering::SeqCst);
        if self.graceful_stop {
            self.qemu.terminate(RECORD_STOP_GRACE);
        } else {
            self.qemu.kill();
        }
        let gone = Instant::now();
        self.results_done.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..).chain(self.results_thread.take()) {
            let _ = t.join();
        }
        let mut rest: Vec<CellEvent> = self.backlog.drain(..).collect();
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Event(e) = msg {
                rest.push(e);
            }
        }
        (rest, gone)
    }

    pub fn qemu_stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

/// The transport to a guest with its own init (ssh or the serial shell), and what it uploads.
fn guest_transport(
    launch: &Launch<'_>,
    spec: &QemuSpec,
    console_input: &mut Option<ChildStdin>,
    tap: mpsc::Receiver<Vec<u8>>,
    stop: &Arc<AtomicBool>,
    start: Instant,
) -> Result<(Box<dyn Transport>, GuestFiles)> {
    let guest = launch
        .guest
        .clone()
        .context("an image with its own init needs the payload to upload")?;
    let t: Box<dyn Transport> = match launch.transport {
        TransportSpec::Ssh(ssh) => Box::new(transport::ssh::SshTransport::new(
            spec.forward.map(|f| f.host_port).unwrap_or_default(),
            ssh.clone(),
            crate::host::workspace_root().join("images"),
            launch.faults.clone(),
            stop.clone(),
            start,
        )),
        TransportSpec::SerialShell(serial) => Box::new(transport::serial::SerialTransport::new(
            Box::new(console_input.take().context("QEMU's stdin is not piped")?),
            tap,
            serial.clone(),
            launch.faults.clone(),
            stop.clone(),
            start,
        )),
        TransportSpec::Pid1 => unreachable!("a PID-1 cell has no transport"),
    };
    Ok((t, guest))
}

/// Starts QEMU. For ssh, picks a free host port for the forward and retries with another when
/// QEMU could not bind it (another process took it in between).
fn spawn_qemu(
    spec: &mut QemuSpec,
    launch: &Launch<'_>,
    stderr_log: &Path,
) -> Result<(Instant, QemuProcess, Vec<std::ffi::OsString>)> {
    let console_input = *launch.transport != TransportSpec::Pid1;
    for attempt in 0..5 {
        if let TransportSpec::Ssh(ssh) = launch.transport {
            let port = transport::ssh::free_port().context("finding a free port for ssh")?;
            spec.forward = Some(Forward {
                host_port: port,
                guest_port: ssh.port,
                restrict: !launch.faults.unrestricted_net,
            });
        }
        let argv = spec.argv();
        write_command_file(&launch.dir.join("qemu.cmd"), &argv)?;
        let start = Instant::now();
        let mut qemu = QemuProcess::spawn(&argv, stderr_log, console_input)?;
        let Some(forward) = spec.forward else {
            return Ok((start, qemu, argv));
        };
        match wait_for_forward(&mut qemu, forward.host_port, stderr_log) {
            Ok(()) => return Ok((start, qemu, argv)),
            Err(PortTaken) if attempt < 4 => continue,
            Err(PortTaken) => break,
        }
    }
    Err(InfraError::new(
        InfraCause::QemuStart,
        "no free port for the ssh forward after 5 attempts",
    )
    .into())
}

struct PortTaken;

/// QEMU binds the forward before the guest runs: wait until the port accepts, or QEMU gives up
/// on it. Any other early exit is an error of QEMU's own, reported as such.
fn wait_for_forward(qemu: &mut QemuProcess, port: u16, stderr_log: &Path) -> Result<(), PortTaken> {
    let until = Instant::now() + Duration::from_secs(5);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < until {
        if qemu.try_wait().is_some() {
            let stderr = std::fs::read_to_string(stderr_log).unwrap_or_default();
            if stderr.contains("forward") {
                return Err(PortTaken);
            }
            // Not a port problem: the monitor sees QEMU's exit and reports it.
            return Ok(());
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Connects to QEMU's results socket. QEMU waits for this before it starts the guest.
fn connect_results(sock: &Path, qemu: &mut QemuProcess, stderr_log: &Path) -> Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return Ok(s),
            Err(_) if Instant::now() < deadline => {
                if let Some(st) = qemu.try_wait() {
                    let stderr = std::fs::read_to_string(stderr_log).unwrap_or_default();
                    return Err(InfraError::new(
                        InfraCause::QemuStart,
                        format!("QEMU exited at start ({st}): {}", last_line(&stderr)),
                    )
                    .into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(InfraError::new(
                    InfraCause::QemuStart,
                    format!("QEMU's results socket never opened: {e}"),
                )
                .into())
            }
        }
    }
}

/// The transport's side of a cell, on its own thread: connect, upload, run the plan, and send
/// every output line and the end.
fn drive(
    mut t: Box<dyn Transport>,
    guest: GuestFiles,
    boot_deadline: Instant,
    tx: mpsc::Sender<Msg>,
) {
    let serial = t.stats().kind == TransportKind::Serial;
    let send = |e: CellEvent| {
        let _ = tx.send(Msg::Event(e));
    };
    let end = t.connect(boot_deadline).and_then(|()| {
        let on_line = &mut |line: &str| send(CellEvent::Line(line.to_string()));
        match &guest.job {
            Some(job) => {
                let budget = boot_deadline.saturating_duration_since(Instant::now());
                crate::guest::driver::run(t.as_mut(), job, &guest.plan_json, budget, on_line)
            }
            None => transport::run_plan(
                t.as_mut(),
                &guest.payload,
                &guest.plan_json,
                serial,
                on_line,
            ),
        }
    });
    send(CellEvent::TransportEnded {
        end,
        stats: t.stats(),
    });
}

/// Reads the console into the log and the event stream; `tap` gets a copy of every byte (for
/// the serial-shell transport).
fn read_console(
    mut stdout: ChildStdout,
    mut log: std::fs::File,
    tx: mpsc::Sender<Msg>,
    tap: Option<mpsc::Sender<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let arrived = Instant::now();
                let _ = log.write_all(&buf[..n]);
                if let Some(tap) = &tap {
                    let _ = tap.send(buf[..n].to_vec());
                }
                let bytes = buf[..n].to_vec();
                if tx
                    .send(Msg::Event(CellEvent::Console { bytes, arrived }))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    let _ = log.flush();
    let _ = tx.send(Msg::ConsoleClosed);
}

fn read_results(stream: UnixStream, tx: mpsc::Sender<Msg>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line).into_owned();
                if tx.send(Msg::Event(CellEvent::Line(text))).is_err() {
                    break;
                }
            }
        }
    }
    let _ = tx.send(Msg::ResultsClosed);
}

/// The results port's backend: a socket QEMU waits on, or for a recorded cell a file in the
/// cell's folder (a socket's writes do not replay).
fn choose_results_port(spec: &mut QemuSpec, cell_dir: &Path, sock_dir: &Path) {
    if spec.record.is_some() {
        let file = cell_dir.join(RECORDED_RESULTS);
        // A cell run again in its folder (resume) must not read the old run's frames.
        let _ = std::fs::remove_file(&file);
        spec.results_file = Some(file);
    } else {
        spec.results_socket = Some(sock_dir.join("results.sock"));
    }
}

/// Follows the results file QEMU writes (a recorded cell), line by line, until QEMU is gone
/// and the file is read to its end.
fn follow_results(path: &Path, done: Arc<AtomicBool>, tx: mpsc::Sender<Msg>) {
    let file = loop {
        // QEMU creates the file before the guest starts; it may not be there yet.
        match std::fs::File::open(path) {
            Ok(f) => break Some(f),
            Err(_) if done.load(Ordering::SeqCst) => break None,
            Err(_) => std::thread::sleep(FOLLOW_POLL),
        }
    };
    let mut reader = file.map(BufReader::new);
    let mut line = Vec::new();
    while let Some(r) = reader.as_mut() {
        // Read before checking: once QEMU is gone, one more pass reads what it wrote last.
        let finished = done.load(Ordering::SeqCst);
        match r.read_until(b'\n', &mut line) {
            Ok(n) if n > 0 && line.ends_with(b"\n") => {
                let text = String::from_utf8_lossy(&line).into_owned();
                line.clear();
                if tx.send(Msg::Event(CellEvent::Line(text))).is_err() {
                    break;
                }
            }
            Ok(_) if !finished => std::thread::sleep(FOLLOW_POLL),
            _ => break,
        }
    }
    let _ = tx.send(Msg::ResultsClosed);
}

/// Saves the QEMU command as a user would type it, to rerun a cell by hand.
fn write_command_file(path: &Path, argv: &[std::ffi::OsString]) -> Result<()> {
    let mut line = String::from(qemu::QEMU);
    for a in argv {
        line.push(' ');
        line.push_str(&crate::host::shell_quote(&a.to_string_lossy()));
    }
    line.push('\n');
    crate::host::write_atomic(path, line.as_bytes())
}
