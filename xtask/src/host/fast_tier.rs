//! The fast test tier (`cargo xtask test --fast`) promises tests that need no root, no QEMU
//! and no network. It runs them with `KSTORM_FAST_TIER=1`, under which the harness refuses to
//! start what would break that promise (QEMU, apt, npm, a download from another host), so a
//! test that strays into the full tier's territory fails loudly instead of passing slowly.

use crate::error::{InfraCause, InfraError};
use anyhow::Result;

/// The variable `cargo xtask test --fast` sets.
pub const VAR: &str = "KSTORM_FAST_TIER";

/// Programs the fast tier does not run: they boot guests, install packages or fetch.
const REFUSED: [&str; 5] = [
    "qemu-system-x86_64",
    "qemu-img",
    "apt-get",
    "npm",
    "gitlab-ci-local",
];

pub fn active() -> bool {
    std::env::var_os(VAR).is_some()
}

/// An error when the fast tier is on and `tool` is one it must not run.
pub fn refuse_tool(tool: &str) -> Result<()> {
    if active() && REFUSED.contains(&tool) {
        return Err(refusal(&format!("runs {tool}")));
    }
    Ok(())
}

/// An error when the fast tier is on and `url` is on another host than this one.
pub fn refuse_download(url: &str) -> Result<()> {
    let local = ["http://127.0.0.1", "http://localhost", "http://[::1]"];
    if active() && !local.iter().any(|l| url.starts_with(l)) {
        return Err(refusal(&format!("downloads {url}")));
    }
    Ok(())
}

fn refusal(what: &str) -> anyhow::Error {
    InfraError::new(
        InfraCause::Harness,
        format!("a test of the fast tier ({VAR}) {what}: it belongs to the full tier"),
    )
    .into()
}
