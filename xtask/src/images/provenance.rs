//! Where a booted kernel came from, with the same keys for every OS, recorded in every result so
//! that a verdict can always be traced to the exact bytes that produced it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How the kernel was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// A Debian binary package, fetched with apt and checked against the archive's hash.
    DebianPackage,
    /// A file downloaded from a URL with a pinned hash.
    Download,
    /// A kernel file on the user's disk.
    LocalFile,
    /// A kernel built by kstorm from a source tree.
    KernelTree,
    #[default]
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub source: SourceKind,
    /// Debian package name, URL or path.
    pub origin: String,
    /// Package version (or kernel release) as its source names it.
    pub version: String,
    /// SHA-256 of what was fetched or given (the `.deb`, the download, the file).
    pub sha256: String,
    /// SHA-256 of the kernel file QEMU booted, when it differs from what was fetched
    /// (extracted from a package, decompressed, patched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_sha256: Option<String>,
    /// A patch kstorm applied, and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Hash of the kernel configuration a tree was built with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The file QEMU was given and the machine profile it booted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
    /// Anything else this source knows (disk image hash, bootstrap task hash, a fallback).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl Provenance {
    /// Every field as (name, value), `extra` flattened, for tables.
    pub fn entries(&self) -> Vec<(String, String)> {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in fields {
            match v {
                serde_json::Value::Object(extra) => out.extend(
                    extra
                        .into_iter()
                        .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string())),
                ),
                serde_json::Value::String(s) if !s.is_empty() => out.push((k, s)),
                _ => {}
            }
        }
        out
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Provenance {
        self.extra.insert(key.to_string(), value.into());
        self
    }
}
