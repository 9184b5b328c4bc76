//! Report titles: templates such as `KASAN: {type} {access} in {func}` filled from the variables a
//! report captured, with addresses, numbers and other run-to-run noise normalised away so that
//! the same bug gives the same title on every run.

use super::signatures::Signatures;

/// A parsed title template: literal text and `{var}` / `{var:raw}` / `{var:if}` placeholders
/// (`:if` inserts nothing but makes the template apply only when the report has the variable).
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    /// A variable; `raw` ones are inserted as captured, the others normalised.
    Var {
        name: String,
        raw: bool,
    },
    /// A condition: the variable must be known; nothing is inserted.
    If(String),
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("'{s}': unclosed '{{'"))?;
            let inner = &after[..close];
            let (name, raw) = match inner.split_once(':') {
                Some((n, "raw")) => (n, true),
                Some((n, "if")) => (n, false),
                Some((_, other)) => return Err(format!("'{s}': unknown modifier ':{other}'")),
                None => (inner, false),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("'{s}': bad variable name '{name}'"));
            }
            parts.push(if inner.ends_with(":if") {
                Part::If(name.to_string())
            } else {
                Part::Var {
                    name: name.to_string(),
                    raw,
                }
            });
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("'{s}': stray '}}'"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var { name, .. } | Part::If(name) => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Fills the template, or `None` when a variable is missing or empty after normalising.
    fn render(&self, sigs: &Signatures, vars: &Vars) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::If(name) => {
                    vars.get(name)?;
                }
                Part::Var { name, raw } => {
                    let value = vars.get(name)?;
                    let value = if *raw {
                        value.trim().to_string()
                    } else {
                        normalise(sigs, name, value)
                    };
                    if value.is_empty() {
                        return None;
                    }
                    out.push_str(&value);
                }
            }
        }
        Some(collapse_spaces(&out))
    }
}

/// The variables a report has captured so far; the first value of a name wins.
#[derive(Debug, Clone, Default)]
pub struct Vars(Vec<(String, String)>);

impl Vars {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets `name` unless it already has a value.
    pub fn offer(&mut self, name: &str, value: &str) {
        if !value.is_empty() && !self.has(name) {
            self.0.push((name.to_string(), value.to_string()));
        }
    }

    /// Takes every named group of a regex match.
    pub fn offer_captures(&mut self, re: &regex::Regex, caps: &regex::Captures) {
        for name in re.capture_names().flatten() {
            if let Some(m) = caps.name(name) {
                self.offer(name, m.as_str());
            }
        }
    }
}

/// The title of a report: the first template whose variables are all known.
pub fn render(sigs: &Signatures, templates: &[Template], vars: &Vars) -> String {
    render_indexed(sigs, templates, vars).1
}

/// The title and the index of the template that made it (the last one when none fit).
pub fn render_indexed(sigs: &Signatures, templates: &[Template], vars: &Vars) -> (usize, String) {
    let (i, title) = first_fitting(sigs, templates, vars);
    (i, polish(sigs, &title))
}

/// The first template that fits, made a title; `None` when none fits (no fallback).
pub fn render_first(sigs: &Signatures, templates: &[Template], vars: &Vars) -> Option<String> {
    templates
        .iter()
        .find_map(|t| t.render(sigs, vars))
        .map(|t| polish(sigs, &t))
}

/// A filled template made a title: the file's `title_normalize` rules (each until nothing
/// changes, as replacements can overlap: "0,1,2"), then the length cap.
pub fn polish(sigs: &Signatures, title: &str) -> String {
    let mut title = title.to_string();
    for (re, with) in &sigs.title_normalize {
        for _ in 0..8 {
            let next = re.replace_all(&title, with.as_str());
            if next == title {
                break;
            }
            title = next.into_owned();
        }
    }
    match sigs.title_max_len {
        // Interleaved lines can make a message run on; the start of it is the stable part.
        Some(max) if title.chars().count() > max => title
            .chars()
            .take(max)
            .collect::<String>()
            .trim_end()
            .to_string(),
        _ => title,
    }
}

fn first_fitting(sigs: &Signatures, templates: &[Template], vars: &Vars) -> (usize, String) {
    if let Some(found) = templates
        .iter()
        .enumerate()
        .find_map(|(i, t)| t.render(sigs, vars).map(|s| (i, s)))
    {
        return found;
    }
    (templates.len().saturating_sub(1), {
        // Validation guarantees the last template uses start-line groups only; an optional group
        // that did not participate can still leave it empty, so fall back to its literal text.
        let last = templates.last().expect("validated: at least one template");
        last.parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Var { .. } | Part::If(_) => None,
            })
            .collect::<String>()
            .trim()
            .to_string()
    })
}

/// Normalises one variable: function names lose compiler suffixes (`.isra.0`, `.cold`) and
/// offsets; other text loses addresses and numbers per the OS's `normalize` rules.
fn normalise(sigs: &Signatures, name: &str, value: &str) -> String {
    let value = value.trim();
    if sigs.function_vars.iter().any(|f| f == name) {
        return clean_function(sigs, value);
    }
    let mut out = value.to_string();
    for (re, with) in &sigs.normalize {
        if re.is_match(&out) {
            out = re.replace_all(&out, with.as_str()).into_owned();
        }
    }
    out.trim()
        .trim_end_matches([',', ';', ':'])
        .trim()
        .to_string()
}

/// `foo.isra.0+0x12/0x40 [mod]` -> `foo`; `__x64_sys_foo` -> `sys_foo` (the shortest of the
/// file's `strip_prefixes` results: syscall entry names differ between architectures).
pub fn clean_function(sigs: &Signatures, value: &str) -> String {
    let mut f = value.trim();
    if let Some(i) = f.find("+0x") {
        f = &f[..i];
    }
    if let Some(frames) = &sigs.frames {
        let whole = f;
        for p in &frames.strip_prefixes {
            if let Some(rest) = whole.strip_prefix(p.as_str()) {
                if !rest.is_empty() && rest.len() < f.len() {
                    f = rest;
                }
            }
        }
    }
    let mut f = f.to_string();
    if let Some(re) = &sigs.function_suffix {
        // Suffixes can stack (`foo.constprop.0.isra.0`): strip until nothing changes.
        loop {
            let next = re.replace(&f, "").into_owned();
            if next == f {
                break;
            }
            f = next;
        }
    }
    f
}

/// A crash as [`same_crash`] sees it: its title and the alternatives that mean the same bug.
#[derive(Debug, Clone, Copy)]
pub struct CrashTitles<'a> {
    pub title: &'a str,
    pub alt_titles: &'a [String],
}

impl<'a> CrashTitles<'a> {
    pub fn new(title: &'a str, alt_titles: &'a [String]) -> CrashTitles<'a> {
        CrashTitles { title, alt_titles }
    }

    /// The title first, then the alternatives; a damaged report's alternatives ("bad-access
    /// in corrupted") would join unrelated bugs, so none end in " in corrupted".
    pub fn all(&self) -> impl Iterator<Item = &'a str> + 'a {
        let alts = self.alt_titles.iter().map(String::as_str);
        std::iter::once(self.title).chain(alts.filter(|t| !t.ends_with(" in corrupted")))
    }

    /// True when the title or an alternative contains `needle` (how `bisect-run --title`
    /// names its target).
    pub fn mentions(&self, needle: &str) -> bool {
        self.all().any(|t| t.contains(needle))
    }
}

impl<'a> From<&'a super::Event> for CrashTitles<'a> {
    fn from(e: &'a super::Event) -> CrashTitles<'a> {
        CrashTitles::new(&e.title, &e.alt_titles)
    }
}

/// Whether two crash reports are the same bug: their titles, or any of their alternative
/// titles, are equal. The one rule `compare` and `bisect-run` use.
pub fn same_crash(a: CrashTitles, b: CrashTitles) -> bool {
    a.all().any(|x| b.all().any(|y| x == y))
}

fn collapse_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parsing_rejects_bad_braces_and_modifiers() {
        assert!(Template::parse("a {b").is_err());
        assert!(Template::parse("a b}").is_err());
        assert!(Template::parse("a {b:x}").is_err());
        assert!(Template::parse("a {}").is_err());
        let t = Template::parse("KASAN: {type} {access:raw} in {func}").unwrap();
        assert_eq!(t.vars().collect::<Vec<_>>(), ["type", "access", "func"]);
    }

    #[test]
    fn same_crash_matches_on_any_title_but_not_on_corrupted_alternatives() {
        let kasan = ["bad-access in foo".to_string()];
        let gpf = ["bad-access in foo".to_string()];
        let a = CrashTitles::new("KASAN: use-after-free Read in foo", &kasan);
        let b = CrashTitles::new("general protection fault in foo", &gpf);
        assert!(same_crash(a, b));
        assert!(same_crash(a, CrashTitles::new("bad-access in foo", &[])));
        assert!(!same_crash(a, CrashTitles::new("WARNING in foo", &[])));
        let damaged = ["bad-access in corrupted".to_string()];
        let c = CrashTitles::new("KASAN: use-after-free Read in corrupted", &damaged);
        let d = CrashTitles::new("general protection fault in corrupted", &damaged);
        assert!(!same_crash(c, d));
        assert!(a.mentions("bad-access"));
        assert!(!c.mentions("bad-access"));
    }
}
