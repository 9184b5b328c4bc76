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
use std::collections::BTreeMap;
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
        Os::Openbsd => (
            "signatures/openbsd.yaml",
            include_str!("../../signatures/openbsd.yaml"),
        ),
        Os::Netbsd => (
            "signatures/netbsd.yaml",
            include_str!("../../signatures/netbsd.yaml"),
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
    /// Rules applied to whole titles once filled (numbers, addresses, line numbers).
    #[serde(default)]
    title_normalize: Option<Vec<RawNormalize>>,
    /// A finished title matching one of these is the sign of a damaged report.
    #[serde(default)]
    corrupted_titles: Vec<String>,
    #[serde(default)]
    suppress: Vec<String>,
    /// Titles longer than this many characters are cut.
    #[serde(default)]
    title_max_len: Option<usize>,
    /// Kinds this file adds to the built-in ones.
    #[serde(default)]
    kinds: Vec<RawKind>,
    /// Named stack rules that signatures refer to by name.
    #[serde(default)]
    stacks: BTreeMap<String, RawStack>,
    #[serde(default)]
    signatures: Vec<RawSignature>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    name: String,
    /// What the kind means, for readers of the file.
    about: String,
}

/// How one signature finds its guilty frame, when the file's defaults do not fit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStack {
    /// Another entry of `stacks:` whose fields this one takes where it leaves them out.
    #[serde(default)]
    like: Option<String>,
    /// Lines after which frames count; `[]` means from the report's first line.
    #[serde(default)]
    start: Option<Vec<String>>,
    /// Frame line forms (each with a `func` group), instead of the file's.
    #[serde(default)]
    frame: Option<OneOrMany>,
    /// Functions never taken for this signature (on top of the file's skip list).
    #[serde(default)]
    skip: Vec<String>,
    /// A frame matching one of these is taken before any other (even one `skip` would drop).
    #[serde(default)]
    prefer: Vec<String>,
    /// When given: the frame taken is the one just before (called by) the first anchor frame.
    #[serde(default)]
    anchors: Vec<String>,
    /// Removed from the chosen function name (`__x64_sys_foo` -> `sys_foo`).
    #[serde(default)]
    strip: Option<String>,
    /// Names given to chosen frames that stand for a group (every `synchronize_*` hang is one).
    #[serde(default)]
    rename: Vec<RawRename>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRename {
    regex: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawStackRef {
    Named(String),
    Inline(RawStack),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrace {
    max_lines: usize,
    #[serde(default)]
    end: Vec<String>,
    /// Once a report's own line holds one of these, lines of any CPU context join it (an
    /// NMI backtrace of all CPUs).
    #[serde(default)]
    other_cpus_after: Vec<String>,
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
    frame: OneOrMany,
    #[serde(default)]
    skip: Vec<String>,
    /// Prefixes removed from every function name (the shortest result wins).
    #[serde(default)]
    strip_prefixes: Vec<String>,
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
    kind: String,
    #[serde(default = "yes")]
    crash: bool,
    literal: OneOrMany,
    start: String,
    title: OneOrMany,
    /// Alternative titles of the same bug: each entry a template, or a list of them of which the
    /// first that fits is taken; entries that do not fit are left out.
    #[serde(default)]
    alt: Vec<OneOrMany>,
    /// The title (templates, first fitting wins) when the trace gave none of the variables the
    /// better `title` templates need (no usable frame): the report is then marked corrupted.
    #[serde(default)]
    corrupted_title: Option<OneOrMany>,
    /// Every report of this signature is a fragment of a report (marked corrupted).
    #[serde(default)]
    corrupted: bool,
    /// The line means something only inside an open report of a `continues` kind; alone it
    /// starts nothing.
    #[serde(default)]
    inside_only: bool,
    #[serde(default)]
    continues: Vec<String>,
    #[serde(default)]
    max_lines: Option<usize>,
    #[serde(default)]
    prompt: bool,
    #[serde(default)]
    unless: Vec<String>,
    /// Stack rules: a name from `stacks:` or an inline mapping.
    #[serde(default)]
    stack: Option<RawStackRef>,
    /// The signature fires only once a line holding one of these has been seen earlier in the
    /// log (a boot banner is a crash only after the system was up).
    #[serde(default)]
    armed_by: Vec<String>,
    /// Match `start` against the whole line, console prefix (timestamps) included.
    #[serde(default)]
    whole_line: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
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
    /// Alternative titles of the same bug: per entry, templates of which the first fitting wins.
    pub alt_titles: Vec<Vec<Template>>,
    /// The title of a report whose trace filled only the last `titles` template.
    pub corrupted_title: Vec<Template>,
    /// Every report of this signature is marked corrupted.
    pub corrupted: bool,
    /// Starts nothing; joins an open report of a `continues` kind.
    pub inside_only: bool,
    /// While a report of one of these kinds is open, this line belongs to it.
    pub continues: Vec<Kind>,
    pub max_lines: usize,
    /// May match an unterminated line (a debugger prompt waits for input without a newline).
    pub prompt: bool,
    pub unless: Vec<Regex>,
    /// How the guilty frame is found (`None`: the OS has no frame rules).
    pub stack: Option<Arc<Stack>>,
    /// Indexes into [`Signatures::arms`]; empty: always armed.
    pub armed_by: Vec<usize>,
    /// `start` sees the line with its console prefix.
    pub whole_line: bool,
}

/// A variable filled from a report's trace lines (e.g. the function in `RIP:`).
#[derive(Debug)]
pub struct VarRule {
    pub name: String,
    pub regex: Regex,
}

/// How stack frames look, and which functions are never to blame (the file's defaults).
#[derive(Debug)]
pub struct Frames {
    pub start: Vec<Regex>,
    pub frame: Vec<Regex>,
    /// Every skip pattern in one regex.
    pub skip: Option<Regex>,
    /// Prefixes stripped from function names (`__x64_sys_`, `__do_sys_`, ...).
    pub strip_prefixes: Vec<String>,
}

/// One signature's frame rules: the file's defaults with its own overrides applied.
#[derive(Debug)]
pub struct Stack {
    /// Frames count after one of these lines; empty: from the report's first line.
    pub start: Vec<Regex>,
    pub frame: Vec<Regex>,
    pub skip: Option<Regex>,
    pub prefer: Option<Regex>,
    pub anchors: Option<Regex>,
    pub strip: Option<Regex>,
    /// The chosen frame, renamed by the first rule that matches it.
    pub rename: Vec<(Regex, String)>,
}

impl Stack {
    /// The file's frame rules with nothing of a signature's own.
    fn defaults(frames: &Frames) -> Stack {
        Stack {
            start: frames.start.clone(),
            frame: frames.frame.clone(),
            skip: None,
            prefer: None,
            anchors: None,
            strip: None,
            rename: Vec::new(),
        }
    }

    /// True when frames must be kept until the report closes (the choice needs all of them).
    pub fn needs_all_frames(&self) -> bool {
        self.skip.is_some() || self.prefer.is_some() || self.anchors.is_some()
    }
}

/// Everything the engine needs to know about one OS's console.
#[derive(Debug)]
pub struct Signatures {
    pub os: Os,
    /// Where the definitions came from (for messages).
    pub source: String,
    pub prefix: Option<Regex>,
    /// True when `prefix` has a `ctx` group (the printk caller, `T123` or `C1`): a report then
    /// takes only the lines of its own context.
    pub prefix_has_ctx: bool,
    pub trace_max_lines: usize,
    pub trace_end: Vec<Regex>,
    pub other_cpus_after: Vec<String>,
    pub vars: Vec<VarRule>,
    pub frames: Option<Frames>,
    pub function_vars: Vec<String>,
    pub function_suffix: Option<Regex>,
    pub normalize: Vec<(Regex, String)>,
    pub title_normalize: Vec<(Regex, String)>,
    pub corrupted_titles: Vec<Regex>,
    pub suppress: Vec<Regex>,
    pub signatures: Vec<Signature>,
    /// Every literal of every signature, deduplicated: the prefilter over whole chunks.
    pub prefilter: AhoCorasick,
    /// True when some signature may fire on an unterminated line.
    pub has_prompts: bool,
    /// The distinct `armed_by` literals of all signatures.
    pub arms: Vec<String>,
    /// The kinds this file may produce (built-in and declared).
    pub kinds: Vec<Kind>,
    pub title_max_len: Option<usize>,
}

impl Signatures {
    /// The shipped signatures for `os`, compiled once per process and shared.
    pub fn builtin(os: Os) -> Result<Arc<Signatures>> {
        static CACHE: [OnceLock<Result<Arc<Signatures>, String>>; Os::ALL.len()] =
            [const { OnceLock::new() }; Os::ALL.len()];
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
/// lists (vars, suppressions, kinds, signatures) are the file's own followed by the parent's.
fn merge(mut raw: RawFile, parent: Option<RawFile>) -> RawFile {
    let Some(p) = parent else { return raw };
    raw.prefix = raw.prefix.or(p.prefix);
    raw.trace = raw.trace.or(p.trace);
    raw.frames = raw.frames.or(p.frames);
    raw.function_vars = raw.function_vars.or(p.function_vars);
    raw.function_suffix = raw.function_suffix.or(p.function_suffix);
    raw.normalize = raw.normalize.or(p.normalize);
    raw.title_normalize = raw.title_normalize.or(p.title_normalize);
    raw.corrupted_titles.extend(p.corrupted_titles);
    raw.title_max_len = raw.title_max_len.or(p.title_max_len);
    raw.vars.extend(p.vars);
    raw.suppress.extend(p.suppress);
    raw.kinds.extend(p.kinds);
    for (name, stack) in p.stacks {
        raw.stacks.entry(name).or_insert(stack);
    }
    raw.signatures.extend(p.signatures);
    raw
}

/// Joins patterns into one regex (any of them matches), or `None` for an empty list.
fn any_of(ctx: &Ctx, at: &str, field: &str, patterns: &[String]) -> Result<Option<Regex>> {
    // Each is compiled alone first, so an error names the bad pattern.
    ctx.regexes(at, field, patterns)?;
    if patterns.is_empty() {
        return Ok(None);
    }
    let joined = patterns
        .iter()
        .map(|p| format!("(?:{p})"))
        .collect::<Vec<_>>()
        .join("|");
    ctx.regex(at, field, &joined).map(Some)
}

fn frame_regexes(ctx: &Ctx, at: &str, field: &str, forms: &OneOrMany) -> Result<Vec<Regex>> {
    let forms = forms.clone().into_vec();
    if forms.is_empty() {
        return Err(ctx.err(at, field, "needs at least one frame form"));
    }
    let res = ctx.regexes(at, field, &forms)?;
    if let Some(bad) = res
        .iter()
        .find(|re| !re.capture_names().flatten().any(|n| n == "func"))
    {
        return Err(ctx.err(
            at,
            field,
            format!("'{}' has no capture group named 'func'", bad.as_str()),
        ));
    }
    Ok(res)
}

fn compile_frames(ctx: &Ctx, raw: &RawFrames) -> Result<Frames> {
    Ok(Frames {
        start: ctx.regexes("frames:", "frames.start", &raw.start)?,
        frame: frame_regexes(ctx, "frame:", "frames.frame", &raw.frame)?,
        skip: any_of(ctx, "skip:", "frames.skip", &raw.skip)?,
        strip_prefixes: raw.strip_prefixes.clone(),
    })
}

/// The entry `name` of `stacks:`, with what it takes from its `like:` (one level only).
fn named_stack(
    ctx: &Ctx,
    stacks: &BTreeMap<String, RawStack>,
    at: &str,
    name: &str,
) -> Result<RawStack> {
    let find = |n: &str| {
        stacks.get(n).cloned().ok_or_else(|| {
            ctx.err(
                at,
                "stack",
                format!("no stack rules named '{n}' under 'stacks:'"),
            )
        })
    };
    let raw = find(name)?;
    match raw.like.clone() {
        None => Ok(raw),
        Some(base) => {
            let base = find(&base)?;
            if base.like.is_some() {
                return Err(ctx.err(
                    at,
                    "stack",
                    format!("'{name}' is like a stack that is like another; one level only"),
                ));
            }
            Ok(fill_from(raw, base))
        }
    }
}

/// `raw` with the fields it leaves out taken from `base`.
fn fill_from(mut raw: RawStack, base: RawStack) -> RawStack {
    raw.like = None;
    raw.start = raw.start.or(base.start);
    raw.frame = raw.frame.or(base.frame);
    raw.strip = raw.strip.or(base.strip);
    if raw.rename.is_empty() {
        raw.rename = base.rename;
    }
    for (own, inherited) in [
        (&mut raw.skip, base.skip),
        (&mut raw.prefer, base.prefer),
        (&mut raw.anchors, base.anchors),
    ] {
        if own.is_empty() {
            *own = inherited;
        }
    }
    raw
}

/// A signature's stack rules: the file's frames with the signature's overrides.
fn compile_stack(ctx: &Ctx, at: &str, frames: &Frames, raw: &RawStack) -> Result<Stack> {
    let start = match &raw.start {
        Some(list) => ctx.regexes(at, "stack.start", list)?,
        None => frames.start.clone(),
    };
    let frame = match &raw.frame {
        Some(forms) => frame_regexes(ctx, at, "stack.frame", forms)?,
        None => frames.frame.clone(),
    };
    Ok(Stack {
        start,
        frame,
        skip: any_of(ctx, at, "stack.skip", &raw.skip)?,
        prefer: any_of(ctx, at, "stack.prefer", &raw.prefer)?,
        anchors: any_of(ctx, at, "stack.anchors", &raw.anchors)?,
        strip: match &raw.strip {
            Some(p) => Some(ctx.regex(at, "stack.strip", p)?),
            None => None,
        },
        rename: raw
            .rename
            .iter()
            .map(|r| Ok((ctx.regex(at, "stack.rename.regex", &r.regex)?, r.to.clone())))
            .collect::<Result<_>>()?,
    })
}

/// The kinds a file may use: the built-in ones and those it declares.
fn compile_kinds(ctx: &Ctx, raw: &[RawKind]) -> Result<Vec<Kind>> {
    let mut kinds = Kind::BUILTIN.to_vec();
    for k in raw {
        let at = format!("name: {}", k.name);
        let kind = Kind::named(&k.name).map_err(|e| ctx.err(&at, "kinds.name", e))?;
        if kinds.contains(&kind) {
            return Err(ctx.err(&at, "kinds.name", "is already a kind"));
        }
        if k.about.trim().is_empty() {
            return Err(ctx.err(&at, "kinds.about", "say what the kind means"));
        }
        kinds.push(kind);
    }
    Ok(kinds)
}

fn kind_of(ctx: &Ctx, kinds: &[Kind], at: &str, field: &str, name: &str) -> Result<Kind> {
    let kind = Kind::named(name).map_err(|e| ctx.err(at, field, e))?;
    if !kinds.contains(&kind) {
        return Err(ctx.err(
            at,
            field,
            format!("unknown kind '{name}' (declare it under 'kinds:' first)"),
        ));
    }
    Ok(kind)
}

/// What every signature is compiled against.
struct Shared<'a> {
    var_names: Vec<String>,
    frames: Option<&'a Frames>,
    default_stack: Option<Arc<Stack>>,
    stacks: &'a BTreeMap<String, RawStack>,
    kinds: &'a [Kind],
    trace_max_lines: usize,
}

fn compile_signature(
    ctx: &Ctx,
    shared: &Shared,
    arms: &mut Vec<String>,
    s: RawSignature,
) -> Result<Signature> {
    let at = format!("name: {}", s.name);
    let kind = kind_of(ctx, shared.kinds, &at, "kind", &s.kind)?;
    if Kind::TIMING.contains(&kind) {
        return Err(ctx.err(
            &at,
            "kind",
            "timing kinds come from the harness, not from text",
        ));
    }
    let continues = s
        .continues
        .iter()
        .map(|k| kind_of(ctx, shared.kinds, &at, "continues", k))
        .collect::<Result<Vec<_>>>()?;
    let literals = s.literal.into_vec();
    if literals.is_empty() || literals.iter().any(|l| l.is_empty() || l.contains('\n')) {
        return Err(ctx.err(
            &at,
            "literal",
            "needs one or more non-empty one-line strings",
        ));
    }
    let start = ctx.regex(&at, "start", &s.start)?;
    let titles = compile_titles(ctx, &at, &start, &shared.var_names, s.title)?;
    let alt_titles = s
        .alt
        .into_iter()
        .map(|alt| compile_alt(ctx, &at, &start, &shared.var_names, alt))
        .collect::<Result<Vec<_>>>()?;
    let corrupted_title = match s.corrupted_title {
        None => Vec::new(),
        Some(_) if titles.len() < 2 => {
            return Err(ctx.err(
                &at,
                "corrupted_title",
                "needs two or more 'title' templates (one naming a frame, one without)",
            ))
        }
        Some(t) => compile_titles(ctx, &at, &start, &shared.var_names, t)?,
    };
    if s.inside_only && continues.is_empty() {
        return Err(ctx.err(
            &at,
            "inside_only",
            "needs the kinds it joins in 'continues'",
        ));
    }
    if s.max_lines == Some(0) {
        return Err(ctx.err(&at, "max_lines", "must be at least 1"));
    }
    let stack = match (&s.stack, shared.frames) {
        (None, _) => shared.default_stack.clone(),
        (Some(_), None) => {
            return Err(ctx.err(&at, "stack", "the file has no 'frames:' to refine"))
        }
        (Some(r), Some(frames)) => {
            let raw = match r {
                RawStackRef::Inline(raw) => raw.clone(),
                RawStackRef::Named(name) => named_stack(ctx, shared.stacks, &at, name)?,
            };
            let raw = match raw.like.clone() {
                Some(base) => fill_from(raw, named_stack(ctx, shared.stacks, &at, &base)?),
                None => raw,
            };
            Some(Arc::new(compile_stack(ctx, &at, frames, &raw)?))
        }
    };
    let mut armed_by = Vec::new();
    for lit in &s.armed_by {
        if lit.is_empty() || lit.contains('\n') {
            return Err(ctx.err(&at, "armed_by", "needs non-empty one-line strings"));
        }
        let i = arms.iter().position(|a| a == lit).unwrap_or_else(|| {
            arms.push(lit.clone());
            arms.len() - 1
        });
        armed_by.push(i);
    }
    Ok(Signature {
        unless: ctx.regexes(&at, "unless", &s.unless)?,
        name: s.name,
        kind,
        crash: s.crash,
        literals,
        start,
        titles,
        alt_titles,
        corrupted_title,
        corrupted: s.corrupted,
        inside_only: s.inside_only,
        continues,
        max_lines: s.max_lines.unwrap_or(shared.trace_max_lines),
        prompt: s.prompt,
        stack,
        armed_by,
        whole_line: s.whole_line,
    })
}

fn compile_titles(
    ctx: &Ctx,
    at: &str,
    start: &Regex,
    var_names: &[String],
    raw: OneOrMany,
) -> Result<Vec<Template>> {
    let start_names: Vec<&str> = start.capture_names().flatten().collect();
    let mut known = start_names.clone();
    known.extend(var_names.iter().map(String::as_str));
    let mut titles = Vec::new();
    for t in raw.into_vec() {
        let template = Template::parse(&t).map_err(|e| ctx.err(at, "title", e))?;
        if let Some(v) = template.vars().find(|v| !known.contains(v)) {
            return Err(ctx.err(
                at,
                "title",
                format!("'{t}' uses '{{{v}}}', which neither 'start' nor vars/frames capture"),
            ));
        }
        titles.push(template);
    }
    // The last title must be reachable from the start line alone, so every event has one.
    match titles.last() {
        None => Err(ctx.err(at, "title", "needs at least one template")),
        Some(t) if t.vars().any(|v| !start_names.contains(&v)) => Err(ctx.err(
            at,
            "title",
            "the last template may only use groups captured by 'start'",
        )),
        Some(_) => Ok(titles),
    }
}

/// Alternative titles: every variable known, none required to come from the start line.
fn compile_alt(
    ctx: &Ctx,
    at: &str,
    start: &Regex,
    var_names: &[String],
    raw: OneOrMany,
) -> Result<Vec<Template>> {
    let mut known: Vec<&str> = start.capture_names().flatten().collect();
    known.extend(var_names.iter().map(String::as_str));
    raw.into_vec()
        .iter()
        .map(|t| {
            let template = Template::parse(t).map_err(|e| ctx.err(at, "alt", e))?;
            if let Some(v) = template.vars().find(|v| !known.contains(v)) {
                return Err(ctx.err(at, "alt", format!("'{t}' uses unknown '{{{v}}}'")));
            }
            Ok(template)
        })
        .collect()
}

fn compile_vars(ctx: &Ctx, raw: &[RawVar]) -> Result<Vec<VarRule>> {
    let mut vars = Vec::new();
    for v in raw {
        let at = format!("name: {}", v.name);
        let regex = ctx.regex(&at, "vars.regex", &v.regex)?;
        if !regex.capture_names().flatten().any(|n| n == v.name) {
            return Err(ctx.err(
                &at,
                "vars.regex",
                format!("has no capture group named '{}'", v.name),
            ));
        }
        vars.push(VarRule {
            name: v.name.clone(),
            regex,
        });
    }
    Ok(vars)
}

/// The literal prefilter over whole chunks: every signature literal and arming literal.
fn prefilter(signatures: &[Signature], arms: &[String]) -> Result<AhoCorasick> {
    let mut all: Vec<&str> = signatures
        .iter()
        .flat_map(|s| s.literals.iter().map(String::as_str))
        .chain(arms.iter().map(String::as_str))
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
    // Leftmost-first lets the searcher use its SIMD (Teddy) prefilter; any match will do.
    AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostFirst)
        .build(&minimal)
        .context("building the literal prefilter")
}

fn compile_normalize(ctx: &Ctx, raw: &[RawNormalize]) -> Result<Vec<(Regex, String)>> {
    raw.iter()
        .map(|n| {
            let re = ctx.regex("normalize:", "normalize.regex", &n.regex)?;
            Ok((re, n.replace.clone()))
        })
        .collect()
}

fn compile_signatures(
    ctx: &Ctx,
    shared: &Shared,
    arms: &mut Vec<String>,
    raw: Vec<RawSignature>,
) -> Result<Vec<Signature>> {
    let mut seen = std::collections::HashSet::new();
    let mut signatures = Vec::new();
    for s in raw {
        if !seen.insert(s.name.clone()) {
            let at = format!("name: {}", s.name);
            let msg = format!("signature '{}' is defined twice", s.name);
            return Err(ctx.err(&at, "name", msg));
        }
        signatures.push(compile_signature(ctx, shared, arms, s)?);
    }
    Ok(signatures)
}

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
    let mut raw = merge(raw, parent_raw);

    let prefix = match &raw.prefix {
        Some(p) => Some(ctx.regex("prefix", "prefix", p)?),
        None => None,
    };
    let prefix_has_ctx = prefix
        .as_ref()
        .is_some_and(|re| re.capture_names().flatten().any(|n| n == "ctx"));
    let trace = raw
        .trace
        .take()
        .ok_or_else(|| ctx.err("os:", "trace", "missing (max_lines, end)"))?;
    if trace.max_lines == 0 {
        return Err(ctx.err("max_lines", "trace.max_lines", "must be at least 1"));
    }
    let vars = compile_vars(&ctx, &raw.vars)?;
    let frames = match &raw.frames {
        None => None,
        Some(f) => Some(compile_frames(&ctx, f)?),
    };
    let mut var_names: Vec<String> = vars.iter().map(|v| v.name.clone()).collect();
    if frames.is_some() {
        var_names.push("frame".to_string());
    }
    let normalize = compile_normalize(&ctx, raw.normalize.as_deref().unwrap_or_default())?;
    let title_normalize =
        compile_normalize(&ctx, raw.title_normalize.as_deref().unwrap_or_default())?;
    if raw.signatures.is_empty() {
        return Err(ctx.err("signatures", "signatures", "no signatures"));
    }
    let kinds = compile_kinds(&ctx, &raw.kinds)?;
    let shared = Shared {
        var_names,
        frames: frames.as_ref(),
        default_stack: frames.as_ref().map(|f| Arc::new(Stack::defaults(f))),
        stacks: &raw.stacks,
        kinds: &kinds,
        trace_max_lines: trace.max_lines,
    };
    let mut arms = Vec::new();
    let signatures = compile_signatures(
        &ctx,
        &shared,
        &mut arms,
        std::mem::take(&mut raw.signatures),
    )?;
    let function_suffix = match &raw.function_suffix {
        Some(p) => Some(ctx.regex("function_suffix", "function_suffix", p)?),
        None => None,
    };
    Ok(Signatures {
        os,
        source: file.to_string(),
        prefix,
        prefix_has_ctx,
        trace_max_lines: trace.max_lines,
        trace_end: ctx.regexes("end:", "trace.end", &trace.end)?,
        other_cpus_after: trace.other_cpus_after,
        vars,
        frames,
        function_vars: raw.function_vars.unwrap_or_default(),
        function_suffix,
        normalize,
        title_normalize,
        corrupted_titles: ctx.regexes(
            "corrupted_titles:",
            "corrupted_titles",
            &raw.corrupted_titles,
        )?,
        suppress: ctx.regexes("suppress:", "suppress", &raw.suppress)?,
        has_prompts: signatures.iter().any(|s| s.prompt),
        prefilter: prefilter(&signatures, &arms)?,
        signatures,
        arms,
        kinds,
        title_max_len: raw.title_max_len,
    })
}
