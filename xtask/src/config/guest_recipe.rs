//! The `guest:` section of an image file: what a guest that the Linux payload cannot run on
//! (FreeBSD, GNU/Hurd) needs done. `guest::driver` carries it out.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a non-Linux guest needs done, as the image file says it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GuestRecipe {
    /// Where variants' boot-loader tunables go; without it, a variant with tunables is refused.
    #[serde(default)]
    pub tunables: Option<TunableFile>,
    /// sysctls set on every boot before anything runs: the panic knobs, so a panic ends the
    /// VM instead of waiting at a debugger prompt.
    #[serde(default)]
    pub boot_sysctls: BTreeMap<String, String>,
    /// The words that set one sysctl; `name=value` is appended (`[sysctl]`).
    #[serde(default)]
    pub sysctl_set: Vec<String>,
    /// The words that print one value back; the name is appended (`[sysctl, -n]`).
    #[serde(default)]
    pub sysctl_get: Vec<String>,
    /// Statistics captured before, during and after each scenario.
    #[serde(default)]
    pub stats: Vec<StatsCapture>,
    pub payload: PayloadRoute,
}

/// The boot loader's tunables file and how the guest reboots to read it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TunableFile {
    /// Written whole (`/boot/loader.conf.local`: the loader reads it after `loader.conf`).
    pub path: String,
    /// The command that reboots the guest (`[shutdown, -r, now]`).
    pub reboot: Vec<String>,
}

/// One statistics command and how to read its output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatsCapture {
    pub name: String,
    /// Words; with `per_server`, `{pid}` is replaced by each Hurd server's PID in turn.
    pub command: Vec<String>,
    pub format: StatsFormat,
    #[serde(default)]
    pub per_server: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StatsFormat {
    /// FreeBSD `vmstat -m`: malloc types, growth read from bytes in use.
    VmstatM,
    /// FreeBSD `vmstat -z`: UMA zones, growth read from items used, failures reported.
    VmstatZ,
    /// Hurd `ps`: servers' memory and threads.
    HurdPs,
    /// Hurd `vmstat`.
    HurdVmstat,
    /// Hurd `portinfo -a PID`: port rights held by one server.
    Portinfo,
}

/// How the scenarios run in a guest the Linux payload cannot run on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadRoute {
    pub route: Route,
    /// The guest's compiler command; `{src}` and `{out}` are replaced by the paths.
    pub compile: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// `guest-payload/portable/kstorm-portable.c`, compiled in the guest by its own compiler:
    /// plain POSIX calls, so the numbers are the guest kernel's, with no ABI layer in between.
    PortableC,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::PortableC => "portable-c",
        }
    }
}
