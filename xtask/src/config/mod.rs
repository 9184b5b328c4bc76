//! Suites and images, as written in `suites/*.yaml` and `images/*.yaml`.
//!
//! Everything a user typed is parsed and validated here, once, into typed structs. Values that
//! have a format (RAM sizes, durations, names) are checked while deserializing, so the YAML
//! error carries the file, line, column and field path; checks across fields (duplicate names,
//! unknown images, scenario parameters at expansion) name the file, the field and the line of
//! its key, from the parser's spans ([`crate::yaml::Layout`]). Every such error is a [`UsageError`].

pub mod guest_recipe;
pub mod vmstat;

pub use crate::error::UsageError;
use crate::yaml::{parse_yaml, read, Origin};
use anyhow::{Context, Result};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a kernel is fetched and booted (`images/<name>.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub name: Name,
    pub description: String,
    /// Which signature table the detector uses for this kernel's console.
    pub os: crate::detect::Os,
    /// Written as a map with one key, e.g. `source: {debian-kernel: {metapackage: ...}}`.
    pub source: Source,
    pub boot: Boot,
    #[serde(default)]
    pub deadlines: Deadlines,
    /// A root filesystem built from Debian packages, booted with its own init (the payload then
    /// runs as a normal process, reached through a [`TransportSpec`]).
    #[serde(default)]
    pub disk: Option<DiskRecipe>,
    /// How the harness reaches the payload: one transport, or a list whose first entry is the
    /// default (`run --transport` picks another). Default: `pid1`.
    #[serde(
        default = "default_transports",
        deserialize_with = "one_or_many_transports"
    )]
    pub transport: Vec<TransportSpec>,
    /// The guest's own steps (login prompts, tunables, statistics, the payload's route) for
    /// images that are not Linux: data read by `guest::driver`.
    #[serde(default)]
    pub guest: Option<guest_recipe::GuestRecipe>,
}

impl Image {
    /// Where the image's scenarios run: GNU Mach's bootstrap task, a recipe guest's agent, or
    /// the Linux payload.
    pub fn route(&self) -> kstorm_payload::registry::Route {
        use kstorm_payload::registry::Route;
        match (&self.os, &self.guest) {
            (crate::detect::Os::Mach, _) => Route::MachTask,
            (_, Some(recipe)) => match recipe.payload.route {
                guest_recipe::Route::PortableC => Route::PortableC,
            },
            (_, None) => Route::LinuxPayload,
        }
    }

    /// The transport named `kind`, or the image's default when `kind` is `None`.
    pub fn transport(&self, kind: Option<TransportKind>) -> Result<&TransportSpec> {
        let Some(kind) = kind else {
            return Ok(&self.transport[0]);
        };
        self.transport
            .iter()
            .find(|t| t.kind() == kind)
            .with_context(|| {
                format!(
                    "image {} offers no {kind} transport (it offers: {})",
                    self.name,
                    self.transport
                        .iter()
                        .map(|t| t.kind().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

/// How the harness talks to the payload in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum TransportSpec {
    /// The payload is the guest's PID 1 in an initramfs; frames come on a serial port.
    Pid1,
    /// The image boots its own init and runs an sshd; QEMU forwards a host port to it.
    Ssh(SshSpec),
    /// The image boots its own init with a login on the serial console.
    SerialShell(SerialSpec),
}

impl TransportSpec {
    pub fn kind(&self) -> TransportKind {
        match self {
            TransportSpec::Pid1 => TransportKind::Pid1,
            TransportSpec::Ssh(_) => TransportKind::Ssh,
            TransportSpec::SerialShell(_) => TransportKind::Serial,
        }
    }
}

/// The transport's name on the command line (`run --transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    #[default]
    Pid1,
    Ssh,
    Serial,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Pid1 => "pid1",
            TransportKind::Ssh => "ssh",
            TransportKind::Serial => "serial",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshSpec {
    pub user: String,
    /// The image's documented password (give this or `key`).
    #[serde(default)]
    pub password: Option<String>,
    /// A private key file, relative to `images/` (give this or `password`).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The guest's sshd port.
    #[serde(default = "default_ssh_port")]
    pub port: u16,
}

fn default_ssh_port() -> u16 {
    22
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSpec {
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
    /// Text that ends the login prompt on the console.
    #[serde(default = "default_login_prompt")]
    pub prompt: String,
}

fn default_login_prompt() -> String {
    "login:".into()
}

fn default_transports() -> Vec<TransportSpec> {
    vec![TransportSpec::Pid1]
}

/// `transport: pid1`, `transport: {ssh: {...}}` or a list of those.
fn one_or_many_transports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TransportSpec>, D::Error> {
    use serde::de::Error;
    struct OneOrMany;
    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<TransportSpec>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("pid1, {ssh: {user, password|key, port}}, {serial-shell: {user, password, prompt}} or a list of those")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            TransportSpec::deserialize(de::value::StrDeserializer::new(s)).map(|t| vec![t])
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            TransportSpec::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| vec![t])
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut list = Vec::new();
            while let Some(t) = seq.next_element()? {
                list.push(t);
            }
            Ok(list)
        }
    }
    let list = d.deserialize_any(OneOrMany)?;
    if list.is_empty() {
        return Err(D::Error::custom("transport: empty list"));
    }
    for t in &list {
        if let TransportSpec::Ssh(s) = t {
            if s.password.is_some() == s.key.is_some() {
                return Err(D::Error::custom(
                    "transport.ssh: give exactly one of `password` and `key`",
                ));
            }
        }
    }
    Ok(list)
}

/// A small root filesystem built from Debian packages (see `images::disk`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRecipe {
    /// Debian packages unpacked into the root, with their `Depends` closure.
    pub packages: Vec<String>,
    /// Kernel modules (from the kernel's own package) loaded at boot, with their dependencies.
    pub modules: Vec<String>,
    /// A folder, relative to `images/`, copied over the root (inittab, rc scripts, ...).
    pub files: PathBuf,
    /// The boot-time initramfs's `/init` script, relative to `images/`: loads the modules,
    /// mounts the disk and switches to it.
    pub init: PathBuf,
    /// Users whose password hash is written to `/etc/shadow`.
    #[serde(default)]
    pub users: Vec<DiskUser>,
    /// Size of the ext4 filesystem, e.g. `64M`.
    pub size: RamSize,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskUser {
    pub name: String,
    pub password: String,
}

/// Where the kernel comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Source {
    /// A Debian kernel package, resolved at run time through a metapackage
    /// (`linux-image-amd64` depends on the current `linux-image-<abi>-amd64`).
    DebianKernel { metapackage: String },
    /// A bzImage published at a URL, pinned by SHA-256, downloaded resumably.
    DownloadedKernel { url: String, sha256: String },
    /// Debian's GNU Mach image package (`gnumach-image-1.8-486`), booted through a GRUB ISO
    /// with kstorm's bootstrap task. `patch_syscall_trap` applies the one patch that lets the
    /// stock kernel run user tasks (see `images/gnumach.rs`); without it the first trap panics.
    DebianGnumach {
        package: String,
        patch_syscall_trap: bool,
    },
    /// A whole disk image published on the web (FreeBSD's CI images, Debian GNU/Hurd's), which
    /// boots through the firmware; see `images::published`.
    PublishedDisk(PublishedDisk),
    /// A kernel on the user's disk: a vmlinux, a bzImage, a Linux build tree or a GNU Mach
    /// kernel (see `images/local.rs`). Also what `run --kernel PATH` puts in place.
    LocalKernel {
        path: PathBuf,
        /// GNU Mach only: patch the syscall trap as `debian-gnumach` does (`run --kernel`
        /// carries the replaced image's choice over). A kernel without the pattern boots as is.
        #[serde(default)]
        patch_syscall_trap: bool,
    },
    /// A Linux source tree built out of tree into the cache (see `images/kernel_tree.rs`):
    /// `base` is `tinyconfig`, `defconfig` or a `.config` file; `config` lists fragments merged
    /// over it (relative paths are relative to `images/`).
    KernelTree {
        path: PathBuf,
        #[serde(default = "default_kernel_base")]
        base: String,
        #[serde(default)]
        config: Vec<PathBuf>,
    },
}

impl Source {
    /// The `source:` key as the image file spells it (`debian-kernel`, `kernel-tree`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Source::DebianKernel { .. } => "debian-kernel",
            Source::DownloadedKernel { .. } => "downloaded-kernel",
            Source::DebianGnumach { .. } => "debian-gnumach",
            Source::PublishedDisk(_) => "published-disk",
            Source::LocalKernel { .. } => "local-kernel",
            Source::KernelTree { .. } => "kernel-tree",
        }
    }
}

fn default_kernel_base() -> String {
    "tinyconfig".into()
}

/// Where a published disk image is and how it is pinned: a SHA-256 written in the recipe, or
/// a SHA-512 read from the published sums at the first download and kept in a lock file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedDisk {
    pub url: String,
    pub format: ArchiveFormat,
    #[serde(default)]
    pub sha256: Option<String>,
    /// The published `SHA512SUMS` beside the image (with `lock`, instead of `sha256`).
    #[serde(default)]
    pub sha512_sums: Option<String>,
    /// The lock file, relative to `images/`, that pins the SHA-512 found at the first download.
    #[serde(default)]
    pub lock: Option<PathBuf>,
    /// How the image boots: through its own boot loader, or through kstorm's GRUB with the
    /// kernel swapped and the image's own modules (GNU/Hurd).
    #[serde(default)]
    pub boot: Option<PublishedBoot>,
}

/// How a downloaded image is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ArchiveFormat {
    #[serde(rename = "raw.xz")]
    RawXz,
    /// A tar archive holding one disk image.
    #[serde(rename = "tar.xz")]
    TarXz,
    #[serde(rename = "raw")]
    Raw,
}

/// kstorm's own GRUB menu for an image whose kernel it swaps (see `images::published`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedBoot {
    /// The GRUB device of the image's root, e.g. `(hd0,msdos1)`.
    pub root: String,
    /// The kernel inside the image, e.g. `/boot/gnumach-1.8-amd64.gz`.
    pub kernel: String,
    /// The image's own module lines, as GRUB takes them (`/hurd/ext2fs.static ...`).
    pub modules: Vec<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Machine {
    /// `-M microvm` booting the uncompressed `vmlinux` through its PVH note: the fast path.
    Microvm,
    /// `-M pc` booting the bzImage: the fallback path.
    Pc,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    pub machine: Machine,
    /// Kernel command line words every cell gets (variants add to it).
    #[serde(default)]
    pub cmdline: Vec<String>,
}

/// Time limits of a cell. Unset fields take the defaults below; a suite may override them.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deadlines {
    /// From QEMU start to the payload's first frame.
    pub boot: Option<HumanDuration>,
    /// Longest silence of the heartbeat while a scenario runs.
    pub heartbeat: Option<HumanDuration>,
    /// The whole cell, boot included.
    pub cell: Option<HumanDuration>,
}

impl Deadlines {
    /// `self` where set, else `other`.
    pub fn or(self, other: Deadlines) -> Deadlines {
        Deadlines {
            boot: self.boot.or(other.boot),
            heartbeat: self.heartbeat.or(other.heartbeat),
            cell: self.cell.or(other.cell),
        }
    }

    /// Every limit (defaults filled in) `factor` times longer: a recorded cell runs under
    /// icount, about twice as slow as an unrecorded one.
    pub fn scaled(self, factor: u32) -> Deadlines {
        let times = |d: Duration| Some(HumanDuration(d * factor));
        Deadlines {
            boot: times(self.boot()),
            heartbeat: times(self.heartbeat()),
            cell: times(self.cell()),
        }
    }

    pub fn boot(&self) -> Duration {
        self.boot.map(|d| d.0).unwrap_or(Duration::from_secs(60))
    }
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(15))
    }
    pub fn cell(&self) -> Duration {
        self.cell.map(|d| d.0).unwrap_or(Duration::from_secs(300))
    }
}

/// A suite: cases crossed with images, RAM sizes and kernel variants (`suites/<name>.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub name: Name,
    pub description: String,
    /// Images the cases run on unless a case says otherwise.
    pub images: Vec<Name>,
    /// RAM sizes unless a case says otherwise.
    pub ram: Vec<RamSize>,
    /// Kernel configurations; each case runs once per variant. Default: one plain variant.
    #[serde(default = "default_variants")]
    pub variants: Vec<Variant>,
    #[serde(default)]
    pub deadlines: Deadlines,
    pub cases: Vec<Case>,
    /// Measurements that gate `ab`: exit 1 when B is significantly worse on one of them.
    #[serde(default)]
    pub gates: Vec<Gate>,
    /// Record every cell with QEMU's record/replay (`run --record` does the same).
    #[serde(default)]
    pub record: bool,
    /// Where the suite was read from, for errors found after parsing.
    #[serde(skip)]
    pub origin: Origin,
}

fn default_variants() -> Vec<Variant> {
    vec![Variant {
        name: Name("base".into()),
        cmdline: Vec::new(),
        sysctl: BTreeMap::new(),
        tunables: BTreeMap::new(),
    }]
}

/// A measurement `ab` gates on, and which way is worse (`{measurement: forks_per_s, worse:
/// lower}`; `case:` narrows it to one case).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    pub measurement: String,
    #[serde(default)]
    pub case: Option<Name>,
    pub worse: Worse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Worse {
    Lower,
    Higher,
}

/// A kernel configuration: boot parameters and sysctls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: Name,
    /// Extra kernel command-line words (`slab_nomerge`, `init_on_free=1`).
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// sysctls the payload sets before the scenarios (`vm.overcommit_memory: 2`).
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    /// Boot-loader tunables (FreeBSD's `/boot/loader.conf`: `vm.kmem_size: 64M`), set before
    /// the measured boot by the image's `guest:` recipe.
    #[serde(default)]
    pub tunables: BTreeMap<String, String>,
}

/// One scenario with its parameters and what it is expected to end in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: Name,
    pub scenario: Name,
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Parameter overrides for `--profile deep` (nightly runs with bigger counts).
    #[serde(default)]
    pub deep: serde_json::Map<String, serde_json::Value>,
    pub expect: Expect,
    /// With `expect: crash`: a substring the crash title must contain.
    #[serde(default)]
    pub expect_title: Option<String>,
    /// Overrides the suite's images for this case.
    #[serde(default)]
    pub images: Option<Vec<Name>>,
    /// Overrides the suite's RAM sizes for this case.
    #[serde(default)]
    pub ram: Option<Vec<RamSize>>,
    /// Only these of the suite's variants (e.g. Linux boot parameters make no sense for Mach).
    #[serde(default)]
    pub variants: Option<Vec<Name>>,
    #[serde(default)]
    pub deadlines: Deadlines,
    /// Record this case's cells with QEMU's record/replay (PID-1 Linux cells only).
    #[serde(default)]
    pub record: bool,
}

/// What a case is expected to end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    Pass,
    Fail,
    Crash,
    Hang,
    Oom,
    Timeout,
}

/// A name used in cell ids and file names: letters, digits, `-`, `_`, `.`, `+`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Name(pub String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c));
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "invalid name {s:?}: use 1-64 letters, digits, '-', '_', '.', '+'"
            )));
        }
        Ok(Name(s))
    }
}

/// Guest RAM in MiB, written `128M`, `1G` or `256` (MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RamSize(pub u64);

impl RamSize {
    pub fn mib(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RamSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1024) {
            write!(f, "{}G", self.0 / 1024)
        } else {
            write!(f, "{}M", self.0)
        }
    }
}

impl std::str::FromStr for RamSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (num, mult) = match t.char_indices().last() {
            Some((i, 'M' | 'm')) => (&t[..i], 1),
            Some((i, 'G' | 'g')) => (&t[..i], 1024),
            _ => (t, 1),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid RAM size {s:?}: write e.g. 128M or 1G"))?;
        let mib = n * mult;
        if !(16..=65536).contains(&mib) {
            return Err(format!("RAM size {s:?} out of range (16M to 64G)"));
        }
        Ok(RamSize(mib))
    }
}

impl<'de> Deserialize<'de> for RamSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RamSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a RAM size like 128M or 1G")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RamSize, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RamSize, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RamSize, E> {
                self.visit_str(&n.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written `90s`, `500ms`, `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = || format!("invalid duration {s:?}: write e.g. 500ms, 90s or 2m");
        let (num, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
            (n, 1)
        } else if let Some(n) = t.strip_suffix('s') {
            (n, 1000)
        } else if let Some(n) = t.strip_suffix('m') {
            (n, 60_000)
        } else if let Some(n) = t.strip_suffix('h') {
            (n, 3_600_000)
        } else {
            return Err(bad());
        };
        let n: u64 = num.trim().parse().map_err(|_| bad())?;
        Ok(HumanDuration(Duration::from_millis(n * unit_ms)))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn file_stem(path: &Path) -> &str {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
}

/// The checks of a recipe that the YAML types cannot express: `(field, message)` on failure.
impl PublishedDisk {
    pub fn check(&self) -> Result<(), (String, String)> {
        let p = self;
        let err = |f: &str, m: String| Err((format!("source.published-disk.{f}"), m));
        if !is_http_url(&p.url) {
            return err("url", format!("{:?} is not an http(s) URL", p.url));
        }
        match (&p.sha256, &p.sha512_sums, &p.lock) {
            (Some(h), None, None) if is_hex(h, 64) => Ok(()),
            (Some(h), None, None) => err("sha256", format!("{h:?} is not 64 hex digits")),
            (None, Some(sums), Some(_)) if is_http_url(sums) => Ok(()),
            (None, Some(sums), Some(_)) => {
                err("sha512_sums", format!("{sums:?} is not an http(s) URL"))
            }
            _ => err(
                "sha256",
                "give either `sha256`, or both `sha512_sums` and `lock`".into(),
            ),
        }
    }
}

fn is_http_url(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://"))
        && u.len() > "https://x".len()
        && !u.contains(char::is_whitespace)
}

pub(crate) fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Reads and validates one image file.
pub fn load_image(path: &Path) -> Result<Image, UsageError> {
    let (image, origin): (Image, Origin) = parse_yaml(path, &read(path)?)?;
    let stem = file_stem(path);
    if image.name.as_str() != stem {
        return Err(origin.error(
            "name",
            format!(
                "{:?} must match the file name {stem:?}",
                image.name.as_str()
            ),
        ));
    }
    if let Source::PublishedDisk(p) = &image.source {
        p.check().map_err(|(field, m)| origin.error(field, m))?;
    }
    let own_init = image.disk.is_some() || matches!(image.source, Source::PublishedDisk(_));
    let needs_disk = image.transport.iter().any(|t| *t != TransportSpec::Pid1);
    if needs_disk && !own_init {
        return Err(origin.error(
            "transport",
            "ssh and serial-shell need an image that boots its own init (a `disk:` recipe)",
        ));
    }
    if own_init && image.transport.contains(&TransportSpec::Pid1) {
        return Err(origin.error(
            "transport",
            "a disk image boots its own init; pid1 does not apply",
        ));
    }
    Ok(image)
}

/// Reads and validates one suite file against the images that exist. (Scenario parameters are
/// checked when the suite is expanded for the images a run chooses: `matrix::expand`.)
pub fn load_suite(path: &Path, images: &BTreeMap<String, Image>) -> Result<Suite, UsageError> {
    let (mut suite, origin): (Suite, Origin) = parse_yaml(path, &read(path)?)?;
    suite.origin = origin;
    check_suite(&suite, images)?;
    Ok(suite)
}

/// The checks across fields of a parsed suite.
fn check_suite(suite: &Suite, images: &BTreeMap<String, Image>) -> Result<(), UsageError> {
    let origin = &suite.origin;
    let stem = file_stem(&origin.path);
    if suite.name.as_str() != stem {
        return Err(origin.error(
            "name",
            format!("{:?} must match the file name {stem:?}", suite.name.0),
        ));
    }
    if suite.cases.is_empty() {
        return Err(origin.error("cases", "a suite needs at least one case"));
    }
    if suite.ram.is_empty() {
        return Err(origin.error("ram", "a suite needs at least one RAM size"));
    }
    let known_image = |field: String, name: &Name| {
        if images.contains_key(name.as_str()) {
            return Ok(());
        }
        let known: Vec<&str> = images.keys().map(String::as_str).collect();
        Err(origin.error(
            field,
            format!("unknown image {:?} (known: {})", name.0, known.join(", ")),
        ))
    };
    for (j, img) in suite.images.iter().enumerate() {
        known_image(format!("images[{j}]"), img)?;
    }
    let mut vnames = std::collections::BTreeSet::new();
    for (i, v) in suite.variants.iter().enumerate() {
        if !vnames.insert(v.name.as_str()) {
            return Err(origin.error(
                format!("variants[{i}].name"),
                format!("duplicate variant {:?}", v.name.0),
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, case) in suite.cases.iter().enumerate() {
        let at = |field: &str| format!("cases[{i}].{field}");
        if !seen.insert(case.name.as_str()) {
            return Err(origin.error(at("name"), format!("duplicate case name {:?}", case.name.0)));
        }
        if case.expect_title.is_some() && case.expect != Expect::Crash {
            return Err(origin.error(at("expect_title"), "only meaningful with `expect: crash`"));
        }
        for (j, img) in case.images.iter().flatten().enumerate() {
            known_image(at(&format!("images[{j}]")), img)?;
        }
        for (j, v) in case.variants.iter().flatten().enumerate() {
            if !vnames.contains(v.as_str()) {
                return Err(origin.error(
                    at(&format!("variants[{j}]")),
                    format!("unknown variant {:?}", v.0),
                ));
            }
        }
        if case.ram.as_ref().is_some_and(|r| r.is_empty()) {
            return Err(origin.error(at("ram"), "empty list"));
        }
    }
    for (i, g) in suite.gates.iter().enumerate() {
        if g.measurement.trim().is_empty() {
            return Err(origin.error(format!("gates[{i}].measurement"), "empty"));
        }
        if let Some(case) = g.case.as_ref().filter(|c| !seen.contains(c.as_str())) {
            return Err(origin.error(
                format!("gates[{i}].case"),
                format!("unknown case {:?}", case.0),
            ));
        }
    }
    Ok(())
}

/// All images and suites of a workspace.
pub struct Catalog {
    pub images: BTreeMap<String, Image>,
    pub suites: BTreeMap<String, Suite>,
    pub root: PathBuf,
}

impl Catalog {
    pub fn load(root: &Path) -> Result<Catalog> {
        let mut images = BTreeMap::new();
        for path in yaml_files(&root.join("images"))? {
            let image = load_image(&path)?;
            images.insert(image.name.0.clone(), image);
        }
        let mut suites = BTreeMap::new();
        for path in yaml_files(&root.join("suites"))? {
            let suite = load_suite(&path, &images)?;
            suites.insert(suite.name.0.clone(), suite);
        }
        Ok(Catalog {
            images,
            suites,
            root: root.to_path_buf(),
        })
    }

    pub fn suite(&self, name: &str) -> Result<&Suite, UsageError> {
        self.suites.get(name).ok_or_else(|| {
            UsageError::option(
                "--suite",
                format!(
                    "no suite {name:?} in suites/ (have: {}; or give a path to a .yaml file)",
                    self.suites.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    }

    /// `--suite`: a suite of `suites/` by name, or a suite file by path (checked against the
    /// workspace's images).
    pub fn resolve_suite(&self, arg: &str) -> Result<Suite, UsageError> {
        let path = Path::new(arg);
        if arg.contains('/') || path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            return load_suite(path, &self.images);
        }
        self.suite(arg).cloned()
    }
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_sizes() {
        assert_eq!("128M".parse::<RamSize>().unwrap(), RamSize(128));
        assert_eq!("1G".parse::<RamSize>().unwrap(), RamSize(1024));
        assert_eq!("256".parse::<RamSize>().unwrap(), RamSize(256));
        assert!("12X".parse::<RamSize>().is_err());
        assert!("8M".parse::<RamSize>().is_err());
        assert_eq!(RamSize(2048).to_string(), "2G");
    }

    #[test]
    fn durations() {
        assert_eq!(
            "500ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            "90s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(90)
        );
        assert_eq!(
            "2m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(120)
        );
        assert!("90".parse::<HumanDuration>().is_err());
    }

    fn image_with(transport: &str) -> Result<Image> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.yaml");
        let disk =
            "disk: {packages: [busybox-static], modules: [ext4], files: d, init: i, size: 64M}\n";
        let text = format!(
            "name: img\ndescription: d\nos: linux\nsource: {{debian-kernel: {{metapackage: m}}}}\nboot: {{machine: microvm}}\n{disk}{transport}"
        );
        std::fs::write(&path, text).unwrap();
        Ok(load_image(&path)?)
    }

    #[test]
    fn transports_parse_one_or_many() {
        let i = image_with("transport: {ssh: {user: root, password: pw}}\n").unwrap();
        assert_eq!(i.transport.len(), 1);
        assert_eq!(i.transport(None).unwrap().kind(), TransportKind::Ssh);
        let i = image_with(
            "transport:\n  - {ssh: {user: root, key: id, port: 2222}}\n  - {serial-shell: {user: root}}\n",
        )
        .unwrap();
        assert_eq!(
            i.transport(Some(TransportKind::Serial)).unwrap().kind(),
            TransportKind::Serial
        );
        match &i.transport[1] {
            TransportSpec::SerialShell(s) => assert_eq!(s.prompt, "login:"),
            t => panic!("{t:?}"),
        }
        let err = i
            .transport(Some(TransportKind::Pid1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("offers no pid1 transport (it offers: ssh, serial)"),
            "{err}"
        );
    }

    #[test]
    fn transport_errors_name_the_field() {
        let err = format!(
            "{:#}",
            image_with("transport: {ssh: {user: root, passwd: x}}\n").unwrap_err()
        );
        assert!(
            err.contains("img.yaml") && err.contains("transport") && err.contains("passwd"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            image_with("transport: {ssh: {user: root}}\n").unwrap_err()
        );
        assert!(err.contains("exactly one of `password` and `key`"), "{err}");
        let err = format!("{:#}", image_with("transport: telnet\n").unwrap_err());
        assert!(err.contains("transport") && err.contains("telnet"), "{err}");
        let err = format!("{:#}", image_with("transport: pid1\n").unwrap_err());
        assert!(err.contains("pid1 does not apply"), "{err}");
    }
}
