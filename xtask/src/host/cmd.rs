//! The one way kstorm runs a short-lived host command (apt, dpkg-deb, mke2fs, gcc, cargo, ...):
//! an argument vector, never a shell string; echoed to stderr first, so a user can rerun it by
//! hand; bounded by a timeout, after which the command is killed and the caller gets an infra
//! error naming it.
//!
//! QEMU guests are not short-lived commands: `qemu.rs` starts and watches those.

use super::{InfraCause, InfraError};
use anyhow::{bail, Context, Result};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What a command may take unless it says otherwise: generous for `apt-get download` of a
/// kernel on a slow mirror, short enough that a wedged tool does not hold a run forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a command's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// Standard output is returned; standard error goes into the error when the command fails.
    Capture,
    /// Both go to kstorm's own (installers and builds whose progress the user should see).
    Inherit,
    /// Both are dropped (a benchmark's baseline QEMU).
    Discard,
}

/// A host command to run once.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: String,
    args: Vec<OsString>,
    dir: Option<PathBuf>,
    env: Vec<(OsString, Option<OsString>)>,
    timeout: Duration,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            dir: None,
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Cmd {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Runs the command in `dir`.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Cmd {
        self.dir = Some(dir.into());
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.env.push((
            key.as_ref().to_os_string(),
            Some(value.as_ref().to_os_string()),
        ));
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Cmd {
        self.env.push((key.as_ref().to_os_string(), None));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Cmd {
        self.timeout = timeout;
        self
    }

    /// Runs it and returns its standard output. Fails with its standard error when it exits
    /// non-zero.
    pub fn read(self) -> Result<String> {
        let out = self.execute(Output::Capture)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs it with its output on kstorm's own stdout and stderr.
    pub fn run(self) -> Result<()> {
        self.execute(Output::Inherit).map(drop)
    }

    /// Runs it with its output dropped.
    pub fn run_silent(self) -> Result<()> {
        self.execute(Output::Discard).map(drop)
    }

    /// The command line as a user would type it.
    pub fn display(&self) -> String {
        command_line(&self.program, &self.args)
    }

    fn execute(self, output: Output) -> Result<std::process::Output> {
        super::require_tools(&[self.program.as_str()])?;
        echo(&self.program, &self.args);
        let mut expr = duct::cmd(&self.program, &self.args)
            .unchecked()
            .stdin_null();
        expr = match output {
            Output::Capture => expr.stdout_capture().stderr_capture(),
            Output::Inherit => expr,
            Output::Discard => expr.stdout_null().stderr_null(),
        };
        if let Some(dir) = &self.dir {
            expr = expr.dir(dir);
        }
        for (key, value) in &self.env {
            expr = match value {
                Some(v) => expr.env(key, v),
                None => expr.env_remove(key),
            };
        }
        let handle = expr
            .start()
            .with_context(|| format!("starting {}", self.program))?;
        let out = wait_bounded(&handle, self.timeout).with_context(|| self.display())?;
        let Some(out) = out else {
            handle.kill().ok();
            bail!(InfraError::new(
                InfraCause::Harness,
                format!(
                    "`{}` did not finish within {} s; killed it",
                    self.display(),
                    self.timeout.as_secs()
                )
            ));
        };
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                self.program,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.clone())
    }
}

/// Waits for the command until `timeout`; `None` when it is still running then. Polls with a
/// growing interval (1 ms to 10 ms), so a command costs little more than its own run time.
fn wait_bounded(handle: &duct::Handle, timeout: Duration) -> Result<Option<&std::process::Output>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(out) = handle.try_wait()? {
            return Ok(Some(out));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// Prints a command line the way a user would type it (unless `KSTORM_QUIET` is set).
pub fn echo(program: &str, args: &[OsString]) {
    if std::env::var_os("KSTORM_QUIET").is_some() {
        return;
    }
    eprintln!("$ {}", command_line(program, args));
}

fn command_line(program: &str, args: &[OsString]) -> String {
    let mut line = shell_quote(program);
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(&a.to_string_lossy()));
    }
    line
}

/// Quotes a word for display only (commands are never run through a shell).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%~".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Converts `&str`s to an argument vector.
pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(items: I) -> Vec<OsString> {
    items.into_iter().map(Into::into).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stdout_and_reports_stderr() {
        let out = Cmd::new("sh").args(["-c", "echo hi"]).read().unwrap();
        assert_eq!(out, "hi\n");
        let err = Cmd::new("sh")
            .args(["-c", "echo broken >&2; exit 3"])
            .read()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exit status: 3") && err.contains("broken"),
            "{err}"
        );
    }

    #[test]
    fn a_command_past_its_timeout_is_killed() {
        let t = Instant::now();
        let err = Cmd::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(200))
            .run()
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(err.downcast_ref::<InfraError>().is_some(), "{err:#}");
        assert!(
            err.to_string().contains("`sleep 30` did not finish"),
            "{err}"
        );
    }

    #[test]
    fn directory_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = Cmd::new("sh")
            .args(["-c", "pwd; echo \"$KSTORM_T\"; echo \"${HOME:-unset}\""])
            .dir(dir.path())
            .env("KSTORM_T", "x y")
            .env_remove("HOME")
            .read()
            .unwrap();
        let real = dir.path().canonicalize().unwrap();
        assert_eq!(out, format!("{}\nx y\nunset\n", real.display()));
    }

    #[test]
    fn quoting_for_display() {
        assert_eq!(shell_quote("console=ttyS0"), "console=ttyS0");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(
            Cmd::new("apt-get")
                .args(["install", "qemu-utils=1:7.2+dfsg-7~x"])
                .display(),
            "apt-get install qemu-utils=1:7.2+dfsg-7~x"
        );
    }
}
