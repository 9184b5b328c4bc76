//! Guests that are not Linux (FreeBSD, GNU/Hurd): their steps are data, the `guest:` section of
//! `images/<name>.yaml` ([`GuestRecipe`]), run by one [`driver`] over the same transports and
//! the same cell runner as every other disk image.
//!
//! - [`vmstat`], [`hurd`]: parsers of the statistics the seeds read;
//! - [`series`]: captures over a scenario, growth and failures;
//! - [`driver`]: tunables (and the reboot they need), sysctls read back, captures, the payload.

pub mod capture;
pub mod driver;
pub mod hurd;
pub mod series;
pub mod vmstat;

pub use crate::config::guest_recipe::{
    GuestRecipe, PayloadRoute, Route, StatsCapture, StatsFormat, TunableFile,
};
use std::collections::BTreeMap;

/// What the driver needs for one cell: the recipe and the variant's tunables and sysctls.
#[derive(Debug, Clone)]
pub struct GuestJob {
    pub recipe: GuestRecipe,
    pub tunables: BTreeMap<String, String>,
    pub sysctls: BTreeMap<String, String>,
}

/// `12M`, `1.5M`, `640K`, `4096` (as `ps` and `vmstat` print them) → bytes.
pub(crate) fn size_bytes(token: &str) -> Option<u64> {
    let (num, mult) = match token.as_bytes().last()? {
        b'K' | b'k' => (&token[..token.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&token[..token.len() - 1], 1 << 20),
        b'G' | b'g' => (&token[..token.len() - 1], 1 << 30),
        _ => (token, 1),
    };
    let n: f64 = num.parse().ok()?;
    (n >= 0.0 && n.is_finite()).then(|| (n * mult as f64).round() as u64)
}
