//! The errors every layer shares, at the bottom of the harness: what the user got wrong
//! ([`UsageError`]: nothing was built or booted) and what the host or the harness got wrong
//! ([`InfraError`], with its [`InfraCause`]: never blamed on the kernel).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// What the user wrote (a suite, an image, a command-line selection) does not hold: nothing
/// was built or booted. `cargo xtask` exits 2 on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    pub file: Option<PathBuf>,
    pub line: Option<u64>,
    /// Where in the file (`cases[3].params.children`) or which option (`--image`).
    pub field: String,
    pub message: String,
}

impl UsageError {
    /// An error about the command line rather than a file.
    pub fn option(option: &str, message: impl Into<String>) -> UsageError {
        UsageError {
            file: None,
            line: None,
            field: option.to_string(),
            message: message.into(),
        }
    }

    /// True when `e` is, or was caused by, a usage error.
    pub fn is_in(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.is::<UsageError>())
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for UsageError {}

/// An error that is the host's or the harness's fault, never the kernel's. Cells that hit one
/// get an `Infra` verdict with its cause; the CLI exits with 2 (or 125 under `--bisect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfraError {
    pub cause: InfraCause,
    pub detail: String,
}

impl InfraError {
    pub fn new(cause: InfraCause, detail: impl Into<String>) -> InfraError {
        InfraError {
            cause,
            detail: detail.into(),
        }
    }

    /// The infra error inside `e`'s chain, if any: the typed cause an inner step gave.
    pub fn find(e: &anyhow::Error) -> Option<&InfraError> {
        e.chain().find_map(|c| c.downcast_ref::<InfraError>())
    }
}

impl std::fmt::Display for InfraError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for InfraError {}

/// Why a cell could not be judged: always the host's or the harness's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InfraCause {
    /// A host tool (QEMU, GRUB, a compiler) is missing and could not be installed.
    ToolMissing,
    /// A kernel, package or image could not be fetched or failed its hash check.
    Download,
    /// A kernel, disk image, ISO or initramfs could not be built.
    ImageBuild,
    /// The guest payload (or the Mach bootstrap task) did not build.
    PayloadBuild,
    /// QEMU did not start, or exited with an error of its own.
    QemuStart,
    /// The ssh or serial-shell channel failed while the kernel showed no crash.
    Transport,
    /// Ctrl-C or SIGTERM stopped the cell.
    Interrupted,
    /// kstorm itself failed (writing results, a bug).
    Harness,
    /// A tool the payload runs in the guest (stress-ng) could not run its load there: out of
    /// resources, not implemented, bad options.
    GuestTool,
}

impl InfraCause {
    pub fn word(self) -> &'static str {
        match self {
            InfraCause::ToolMissing => "tool missing",
            InfraCause::Download => "download",
            InfraCause::ImageBuild => "image build",
            InfraCause::PayloadBuild => "payload build",
            InfraCause::QemuStart => "QEMU start",
            InfraCause::Transport => "transport",
            InfraCause::Interrupted => "interrupted",
            InfraCause::Harness => "harness",
            InfraCause::GuestTool => "guest tool",
        }
    }
}
