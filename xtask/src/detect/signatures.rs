//! Crash signatures: one YAML file per OS (`xtask/signatures/<os>.yaml`), loaded and validated
//! once into compiled regexes and a multi-pattern prefilter.
//!
//! The files are data on purpose: adding a crash format is editing YAML, not code. Errors name the
//! file, the line and the field, because a wrong regex in a 300-line file is otherwise a hunt.

use super::title::Template;
use super::{Kind, Os};
use aho_corasick::AhoCorasick;
use anyhow::{anyhow, bail, Context, Result};
use regex::Regex;
use serde::Deserialize;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The signature files shipped with kstorm, embedded so the binary works from any directory.
fn builtin_text(os: Os) -> (&'static str, &'static str) {
    match os {
        Os::Linux => (
            "signatures/linux.yaml",
            include_str!("../../signatures/linux.yaml"),
        ),
        Os::Freebsd => (
            "signatures/freebsd.yaml",
            include_str!("../../signatures/freebsd.yaml"),
        ),
        Os::Mach => (
            "signatures/mach.yaml",
            include_str!("../../signatures/mach.yaml"),
        ),
        Os::Hurd => (
            "signatures/hurd.yaml",
            include_str!("../../signatures/hurd.yaml"),
        ),
    }
}

/// Lines longer than this are cut: a runaway line must not grow memory without bound.
pub const MAX_LINE: usize = 4096;

// ---------------------------------------------------------------------------------------------
// The file format, as written by people.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    os: Os,
    /// Another OS whose file is appended to this one (Hurd runs on GNU Mach).
    #[serde(default)]
    inherit: Option<Os>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    trace: Option<RawTrace>,
    #[serde(default)]
    vars: Vec<RawVar>,
    #[serde(default)]
    frames: Option<RawFrames>,
    #[serde(default)]
    function_vars: Option<Vec<String>>,
    #[serde(default)]
    function_suffix: Option<String>,
    #[serde(default)]
    normalize: Option<Vec<RawNormalize>>,
    #[serde(default)]
    suppress: Vec<String>,
    #[serde(default)]
    signatures: Vec<RawSignature>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrace {
    max_lines: usize,
    #[serde(default)]
    end: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVar {
    name: String,
    regex: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrames {
    start: Vec<String>,
    frame: String,
    #[serde(default)]
    skip: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNormalize {
    regex: String,
    replace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    name: String,
    kind: Kind,
    #[serde(default = "yes")]
    crash: bool,
    literal: OneOrMany,
    start: String,
    title: OneOrMany,
    #[serde(default)]
    continues: Vec<Kind>,
    #[serde(default)]
    max_lines: Option<usize>,
    #[serde(default)]
    prompt: bool,
    #[serde(default)]
    unless: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The compiled form the engine uses.

/// One crash or event format.
#[derive(Debug)]
pub struct Signature {
    pub name: String,
    pub kind: Kind,
    pub crash: bool,
    /// The line is tried against `start` only when it contains one of these.
    pub literals: Vec<String>,
    pub start: Regex,
    /// Title templates, best first; the first whose variables are all known wins.
    pub titles: Vec<Template>,
    /// While a report of one of these kinds is open, this line belongs to it.
    pub continues: Vec<Kind>,
    pub max_lines: usize,
    /// May match an unterminated line (a debugger prompt waits for input without a newline).
    pub prompt: bool,
    pub unless: Vec<Regex>,
}

/// A variable filled from a report's trace lines (e.g. the function in `RIP:`).
#[derive(Debug)]
pub struct VarRule {
    pub name: String,
    pub regex: Regex,
}

/// How stack frames look, and which functions are never to blame.
#[derive(Debug)]
pub struct Frames {
    pub start: Vec<Regex>,
    pub frame: Regex,
    pub skip: Vec<Regex>,
}

/// Everything the engine needs to know about one OS's console.
#[derive(Debug)]
pub struct Signatures {
    pub os: Os,
    /// Where the definitions came from (for messages).
    pub source: String,
    pub prefix: Option<Regex>,
    pub trace_max_lines: usize,
    pub trace_end: Vec<Regex>,
    pub vars: Vec<VarRule>,
    pub frames: Option<Frames>,
    pub function_vars: Vec<String>,
    pub function_suffix: Option<Regex>,
    pub normalize: Vec<(Regex, String)>,
    pub suppress: Vec<Regex>,
    pub signatures: Vec<Signature>,
    /// Every literal of every signature, deduplicated: the prefilter over whole chunks.
    pub prefilter: AhoCorasick,
    /// True when some signature may fire on an unterminated line.
    pub has_prompts: bool,
}

impl Signatures {
    /// The shipped signatures for `os`, compiled once per process and shared.
    pub fn builtin(os: Os) -> Result<Arc<Signatures>> {
        static CACHE: [OnceLock<Result<Arc<Signatures>, String>>; 4] = [
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
        ];
        let slot = &CACHE[os as usize];
        slot.get_or_init(|| {
            let (name, text) = builtin_text(os);
            match Signatures::parse(name, text) {
                Ok(s) if s.os != os => Err(format!(
                    "{name}: field 'os': says {}, expected {}",
                    s.os.as_str(),
                    os.as_str()
                )),
                Ok(s) => Ok(Arc::new(s)),
                Err(e) => Err(format!("{e:#}")),
            }
        })
        .clone()
        .map_err(|e| anyhow!(e))
    }

    /// Loads a signature file from disk (to try new signatures without rebuilding).
    pub fn from_file(path: &Path) -> Result<Signatures> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading signature file {}", path.display()))?;
        Signatures::parse(&path.display().to_string(), &text)
    }

    /// Parses and validates one signature file; `name` is used in error messages.
    pub fn parse(name: &str, text: &str) -> Result<Signatures> {
        let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| match e.location() {
            Some(loc) => anyhow!("{name}:{}:{}: {e}", loc.line(), loc.column()),
            None => anyhow!("{name}: {e}"),
        })?;
        let parent = match raw.inherit {
            None => None,
            Some(os) if os == raw.os => {
                bail!("{name}: field 'inherit': a file cannot inherit itself")
            }
            Some(os) => {
                let (pname, ptext) = builtin_text(os);
                let parent: RawFile = serde_saphyr::from_str(ptext)
                    .map_err(|e| anyhow!("{pname} (inherited by {name}): {e}"))?;
                if parent.inherit.is_some() {
                    bail!(
                        "{name}: field 'inherit': {pname} inherits too; only one level is allowed"
                    );
                }
                Some((pname, ptext, parent))
            }
        };
        compile(name, text, raw, parent)
    }
}

/// Where a key or signature sits, for error messages: the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// Names the place of an error: the file (or the inherited file) and the line.
struct Ctx<'a> {
    files: Vec<(&'a str, &'a str)>,
}

impl Ctx<'_> {
    fn place(&self, needle: &str) -> String {
        for (file, text) in &self.files {
            if let Some(line) = line_of(text, needle) {
                return format!("{file}:{line}");
            }
        }
        self.files[0].0.to_string()
    }

    /// An error at the item `at` (a signature name or a key), about `field`.
    fn err(&self, at: &str, field: &str, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: {at}: field '{field}': {msg}", self.place(at))
    }

    fn regex(&self, at: &str, field: &str, pattern: &str) -> Result<Regex> {
        Regex::new(pattern).map_err(|e| {
            let first = pattern.lines().next().unwrap_or("");
            let place = if line_of(self.files[0].1, first).is_some() {
                first
            } else {
                at
            };
            anyhow!(
                "{}: {at}: field '{field}': bad regex: {e}",
                self.place(place)
            )
        })
    }

    fn regexes(&self, at: &str, field: &str, patterns: &[String]) -> Result<Vec<Regex>> {
        patterns.iter().map(|p| self.regex(at, field, p)).collect()
    }
}

/// Merges an inherited file into `raw`: settings the file leaves out come from the parent,
/// lists (vars, suppressions, signatures) are the file's own followed by the parent's.
fn merge(mut raw: RawFile, parent: Option<RawFile>) -> RawFile {
    let Some(p) = parent else { return raw };
    raw.prefix = raw.prefix.or(p.prefix);
    raw.trace = raw.trace.or(p.trace);
    raw.frames = raw.frames.or(p.frames);
    raw.function_vars = raw.function_vars.or(p.function_vars);
    raw.function_suffix = raw.function_suffix.or(p.function_suffix);
    raw.normalize = raw.normalize.or(p.normalize);
    raw.vars.extend(p.vars);
    raw.suppress.extend(p.suppress);
    raw.signatures.extend(p.signatures);
    raw
}

const TIMING_KINDS: [Kind; 3] = [Kind::NoOutput, Kind::NoProgress, Kind::LostConnection];

fn compile(
    file: &str,
    text: &str,
    raw: RawFile,
    parent: Option<(&str, &str, RawFile)>,
) -> Result<Signatures> {
    let mut ctx = Ctx {
        files: vec![(file, text)],
    };
    let parent_raw = parent.map(|(pfile, ptext, praw)| {
        ctx.files.push((pfile, ptext));
        praw
    });
    let os = raw.os;
    let raw = merge(raw, parent_raw);

    let prefix = match &raw.prefix {
        Some(p) => Some(ctx.regex("prefix", "prefix", p)?),
        None => None,
    };
    let trace = raw
        .trace
        .ok_or_else(|| ctx.err("os:", "trace", "missing (max_lines, end)"))?;
    if trace.max_lines == 0 {
        return Err(ctx.err("max_lines", "trace.max_lines", "must be at least 1"));
    }
    let trace_end = ctx.regexes("end:", "trace.end", &trace.end)?;

    let mut var_names: Vec<String> = Vec::new();
    let mut vars = Vec::new();
    for v in &raw.vars {
        let regex = ctx.regex(&format!("name: {}", v.name), "vars.regex", &v.regex)?;
        if !regex.capture_names().flatten().any(|n| n == v.name) {
            return Err(ctx.err(
                &format!("name: {}", v.name),
                "vars.regex",
                format!("has no capture group named '{}'", v.name),
            ));
        }
        var_names.push(v.name.clone());
        vars.push(VarRule {
            name: v.name.clone(),
            regex,
        });
    }

    let frames = match &raw.frames {
        None => None,
        Some(f) => {
            let frame = ctx.regex("frame:", "frames.frame", &f.frame)?;
            if !frame.capture_names().flatten().any(|n| n == "func") {
                return Err(ctx.err(
                    "frame:",
                    "frames.frame",
                    "has no capture group named 'func'",
                ));
            }
            var_names.push("frame".to_string());
            Some(Frames {
                start: ctx.regexes("frames:", "frames.start", &f.start)?,
                frame,
                skip: ctx.regexes("skip:", "frames.skip", &f.skip)?,
            })
        }
    };
    let function_suffix = match &raw.function_suffix {
        Some(p) => Some(ctx.regex("function_suffix", "function_suffix", p)?),
        None => None,
    };
    let mut normalize = Vec::new();
    for n in raw.normalize.iter().flatten() {
        normalize.push((
            ctx.regex("normalize:", "normalize.regex", &n.regex)?,
            n.replace.clone(),
        ));
    }
    let suppress = ctx.regexes("suppress:", "suppress", &raw.suppress)?;

    if raw.signatures.is_empty() {
        return Err(ctx.err("signatures", "signatures", "no signatures"));
    }
    let mut signatures = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in raw.signatures {
        let at = format!("name: {}", s.name);
        if !seen.insert(s.name.clone()) {
            return Err(ctx.err(
                &at,
                "name",
                format!("signature '{}' is defined twice", s.name),
            ));
        }
        if TIMING_KINDS.contains(&s.kind) {
            return Err(ctx.err(
                &at,
                "kind",
                "timing kinds come from the harness, not from text",
            ));
        }
        let literals = s.literal.into_vec();
        if literals.is_empty() || literals.iter().any(|l| l.is_empty() || l.contains('\n')) {
            return Err(ctx.err(
                &at,
                "literal",
                "needs one or more non-empty one-line strings",
            ));
        }
        let start = ctx.regex(&at, "start", &s.start)?;
        let mut known: Vec<&str> = start.capture_names().flatten().collect();
        known.extend(var_names.iter().map(String::as_str));
        let mut titles = Vec::new();
        for t in s.title.into_vec() {
            let template = Template::parse(&t).map_err(|e| ctx.err(&at, "title", e))?;
            if let Some(v) = template.vars().find(|v| !known.contains(v)) {
                return Err(ctx.err(
                    &at,
                    "title",
                    format!("'{t}' uses '{{{v}}}', which neither 'start' nor vars/frames capture"),
                ));
            }
            titles.push(template);
        }
        // The last title must be reachable from the start line alone, so every event has one.
        let start_names: Vec<&str> = start.capture_names().flatten().collect();
        match titles.last() {
            None => return Err(ctx.err(&at, "title", "needs at least one template")),
            Some(t) if t.vars().any(|v| !start_names.contains(&v)) => {
                return Err(ctx.err(
                    &at,
                    "title",
                    "the last template may only use groups captured by 'start'",
                ))
            }
            Some(_) => {}
        }
        if s.max_lines == Some(0) {
            return Err(ctx.err(&at, "max_lines", "must be at least 1"));
        }
        signatures.push(Signature {
            unless: ctx.regexes(&at, "unless", &s.unless)?,
            name: s.name,
            kind: s.kind,
            crash: s.crash,
            literals,
            start,
            titles,
            continues: s.continues,
            max_lines: s.max_lines.unwrap_or(trace.max_lines),
            prompt: s.prompt,
        });
    }
    let mut all: Vec<&str> = signatures
        .iter()
        .flat_map(|s| s.literals.iter().map(String::as_str))
        .collect();
    all.sort_unstable();
    all.dedup();
    // A literal containing another is redundant for the prefilter (the shorter one already
    // flags the line); fewer patterns keep the SIMD prefilter usable (it takes up to 64).
    let minimal: Vec<&str> = all
        .iter()
        .copied()
        .filter(|l| !all.iter().any(|other| other != l && l.contains(other)))
        .collect();
    let all = minimal;
    // Leftmost-first lets the searcher use its SIMD (Teddy) prefilter; any match will do.
    let prefilter = AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostFirst)
        .build(&all)
        .context("building the literal prefilter")?;
    Ok(Signatures {
        os,
        source: file.to_string(),
        prefix,
        trace_max_lines: trace.max_lines,
        trace_end,
        vars,
        frames,
        function_vars: raw.function_vars.unwrap_or_default(),
        function_suffix,
        normalize,
        suppress,
        has_prompts: signatures.iter().any(|s| s.prompt),
        signatures,
        prefilter,
    })
}
