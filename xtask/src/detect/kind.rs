//! What kind of report a console log holds: a kebab-case name (`kernel-page-fault`, ...).
//!
//! Kinds are data: a signature file may declare its own (`kinds:`), so a new detector kind needs
//! no Rust change. The kinds every OS shares, and the ones the harness itself creates from timing
//! (`no-output`, `no-progress`, `lost-connection`) or consumes (`oom-kill`, `halted`), are
//! constants here.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// A report kind. Cheap to copy and compare; serialised as its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind(&'static str);

// The constants keep the spelling of the enum this type replaced, so `Kind::Panic` reads as
// before at every call site.
#[allow(non_upper_case_globals)]
impl Kind {
    pub const Panic: Kind = Kind("panic");
    pub const Bug: Kind = Kind("bug");
    pub const Oops: Kind = Kind("oops");
    pub const GeneralProtectionFault: Kind = Kind("general-protection-fault");
    pub const KernelPageFault: Kind = Kind("kernel-page-fault");
    pub const Sanitizer: Kind = Kind("sanitizer");
    pub const Warning: Kind = Kind("warning");
    pub const SoftLockup: Kind = Kind("soft-lockup");
    pub const HardLockup: Kind = Kind("hard-lockup");
    pub const HungTask: Kind = Kind("hung-task");
    pub const RcuStall: Kind = Kind("rcu-stall");
    /// The OOM killer killed a process: an event, not a crash.
    pub const OomKill: Kind = Kind("oom-kill");
    /// The kernel's last words before it stopped the machine without powering it off: an
    /// event, not a crash. A finished cell ends on it (QEMU does not exit by itself).
    pub const Halted: Kind = Kind("halted");
    pub const DebuggerEntered: Kind = Kind("debugger-entered");
    pub const KernelTrap: Kind = Kind("kernel-trap");
    pub const ZoneExhausted: Kind = Kind("zone-exhausted");
    pub const KmemMapTooSmall: Kind = Kind("kmem-map-too-small");
    pub const BootFailure: Kind = Kind("boot-failure");
    /// From timing, not text: the guest printed nothing before its deadline.
    pub const NoOutput: Kind = Kind("no-output");
    /// From timing: the heartbeat stopped.
    pub const NoProgress: Kind = Kind("no-progress");
    /// From timing: QEMU or the transport died without a kernel report.
    pub const LostConnection: Kind = Kind("lost-connection");

    /// Kinds known without any signature file.
    pub const BUILTIN: [Kind; 21] = [
        Kind::Panic,
        Kind::Bug,
        Kind::Oops,
        Kind::GeneralProtectionFault,
        Kind::KernelPageFault,
        Kind::Sanitizer,
        Kind::Warning,
        Kind::SoftLockup,
        Kind::HardLockup,
        Kind::HungTask,
        Kind::RcuStall,
        Kind::OomKill,
        Kind::Halted,
        Kind::DebuggerEntered,
        Kind::KernelTrap,
        Kind::ZoneExhausted,
        Kind::KmemMapTooSmall,
        Kind::BootFailure,
        Kind::NoOutput,
        Kind::NoProgress,
        Kind::LostConnection,
    ];

    /// Kinds that come from the harness's clocks, never from console text.
    pub const TIMING: [Kind; 3] = [Kind::NoOutput, Kind::NoProgress, Kind::LostConnection];

    /// The kind called `name`, which must be kebab-case (`[a-z][a-z0-9]*(-[a-z0-9]+)*`).
    /// Names outside [`Kind::BUILTIN`] are interned once per process.
    pub fn named(name: &str) -> Result<Kind, String> {
        if let Some(k) = Kind::BUILTIN.iter().find(|k| k.0 == name) {
            return Ok(*k);
        }
        if !is_kebab(name) {
            return Err(format!(
                "'{name}' is not a kind name (lowercase words joined by '-')"
            ));
        }
        static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        let mut names = NAMES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(known) = names.get(name) {
            return Ok(Kind(known));
        }
        // Leaked on purpose: each distinct name is stored once for the life of the process.
        let stored: &'static str = Box::leak(name.to_string().into_boxed_str());
        names.insert(stored);
        Ok(Kind(stored))
    }

    pub fn is_builtin(self) -> bool {
        Kind::BUILTIN.contains(&self)
    }

    /// The name used in signature files and JSON.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

fn is_kebab(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 64
        && !name.ends_with('-')
        && !name.contains("--")
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        let name = String::deserialize(d)?;
        Kind::named(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn names_round_trip_and_are_validated() {
        assert_eq!(Kind::named("oom-kill"), Ok(Kind::OomKill));
        let leak = Kind::named("memory-leak").unwrap();
        assert_eq!(leak, Kind::named("memory-leak").unwrap());
        assert!(!leak.is_builtin());
        assert_eq!(serde_json::to_string(&leak).unwrap(), "\"memory-leak\"");
        let back: Kind = serde_json::from_str("\"kernel-page-fault\"").unwrap();
        assert_eq!(back, Kind::KernelPageFault);
        for bad in [
            "",
            "Panic",
            "two words",
            "x--y",
            "trailing-",
            "-lead",
            "snake_case",
        ] {
            assert!(Kind::named(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(Kind::NoOutput, Kind::NoOutput | Kind::NoProgress));
    }
}
