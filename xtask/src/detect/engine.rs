//! The streaming engine: finds report start lines in console bytes as they arrive, collects each
//! report's trace, and titles it.
//!
//! Speed comes from not looking at most lines: a multi-pattern literal search (Aho-Corasick)
//! runs over whole chunks, and only lines holding a literal, or lines inside an open report, are
//! cleaned and matched against regexes. Line numbers come from a vectorised newline count.
//!
//! Chunking never changes the result: a line is judged on its first [`MAX_LINE`] raw bytes
//! whether it arrived whole or in pieces.

use super::line::clean;
use super::signatures::{Signature, Signatures, MAX_LINE};
use super::title::{self, clean_function, Vars};
use super::{Event, Report};
use memchr::{memchr, memmem, memrchr};
use std::sync::Arc;

/// Reports kept in memory; later ones are still reported as events, and counted.
const MAX_REPORTS: usize = 1000;

/// Counters about input the engine had to cut or drop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Complete lines seen.
    pub lines: u64,
    /// Bytes dropped from lines longer than the line cap.
    pub dropped_bytes: u64,
    /// Reports not stored because too many were open already (their events were still emitted).
    pub dropped_reports: u64,
}

/// The report whose trace is still being collected.
struct Open {
    /// Index in `reports`, or `None` when the report is not stored (over the cap).
    index: Option<usize>,
    sig: usize,
    vars: Vars,
    lines_left: usize,
    in_frames: bool,
    event: Event,
}

pub struct Engine {
    sigs: Arc<Signatures>,
    magic: memmem::Finder<'static>,
    /// The current unterminated line (its first MAX_LINE bytes).
    partial: Vec<u8>,
    /// True once the current unterminated line has fired a prompt signature.
    prompt_fired: bool,
    line_no: u64,
    reports: Vec<Report>,
    open: Option<Open>,
    stats: Stats,
}

impl Engine {
    pub fn new(sigs: Arc<Signatures>) -> Engine {
        Engine {
            sigs,
            magic: memmem::Finder::new(kstorm_payload::frame::MAGIC.as_bytes()).into_owned(),
            partial: Vec::new(),
            prompt_fired: false,
            line_no: 0,
            reports: Vec::new(),
            open: None,
            stats: Stats::default(),
        }
    }

    pub fn signatures(&self) -> &Arc<Signatures> {
        &self.sigs
    }

    pub fn stats(&self) -> Stats {
        Stats {
            lines: self.line_no,
            ..self.stats
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        if !self.partial.is_empty() {
            match memchr(b'\n', bytes) {
                None => {
                    self.extend_partial(bytes);
                    self.check_prompt(&mut events);
                    return events;
                }
                Some(i) => {
                    self.extend_partial(&bytes[..i]);
                    let line = std::mem::take(&mut self.partial);
                    self.line(&line, &mut events);
                    self.partial = line;
                    self.partial.clear();
                    bytes = &bytes[i + 1..];
                }
            }
        }
        let body_len = memrchr(b'\n', bytes).map_or(0, |i| i + 1);
        self.body(&bytes[..body_len], &mut events);
        let tail = &bytes[body_len..];
        if !tail.is_empty() {
            self.extend_partial(tail);
            self.check_prompt(&mut events);
        }
        events
    }

    pub fn finish(mut self) -> Vec<Report> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            let mut sink = Vec::new();
            self.line(&line, &mut sink);
        }
        self.close();
        self.reports
    }

    fn extend_partial(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.partial.len());
        let take = room.min(bytes.len());
        self.partial.extend_from_slice(&bytes[..take]);
        self.stats.dropped_bytes += (bytes.len() - take) as u64;
    }

    /// Complete lines (`body` ends with `\n`, or is empty), starting at a line start.
    fn body(&mut self, body: &[u8], events: &mut Vec<Event>) {
        let mut pos = 0;
        while pos < body.len() {
            if self.open.is_some() {
                // Inside a report every line matters: go line by line until it closes.
                let end = pos + memchr(b'\n', &body[pos..]).expect("body ends with a newline");
                self.line(&body[pos..end], events);
                pos = end + 1;
                continue;
            }
            let Some(m) = self.sigs.prefilter.find(&body[pos..]) else {
                self.line_no += count_newlines(&body[pos..]);
                return;
            };
            let at = pos + m.start();
            let line_start = memrchr(b'\n', &body[pos..at]).map_or(pos, |i| pos + i + 1);
            self.line_no += count_newlines(&body[pos..line_start]);
            let end = at + memchr(b'\n', &body[at..]).expect("body ends with a newline");
            self.line(&body[line_start..end], events);
            pos = end + 1;
        }
    }

    /// One complete line, without its `\n`.
    fn line(&mut self, raw: &[u8], events: &mut Vec<Event>) {
        self.line_no += 1;
        if raw.len() > MAX_LINE {
            self.stats.dropped_bytes += (raw.len() - MAX_LINE) as u64;
        }
        let raw = &raw[..raw.len().min(MAX_LINE)];
        let prompt_fired = std::mem::replace(&mut self.prompt_fired, false);
        if self.magic.find(raw).is_some() {
            // The payload's own result frames are not kernel output, whatever they contain.
            return;
        }
        let candidate = self.sigs.prefilter.is_match(raw);
        if !candidate && self.open.is_none() {
            return;
        }
        let text = clean(raw);
        let body = self.strip_prefix(&text);
        if prompt_fired {
            // The prompt already opened or joined a report with this line's beginning: keep the
            // whole line in its place, as if the line had arrived at once.
            if let Some(i) = self.open.as_ref().and_then(|o| o.index) {
                if let Some(last) = self.reports[i].lines.last_mut() {
                    *last = text;
                }
            }
            return;
        }
        if candidate {
            if let Some((sig, vars)) = self.match_start(body, false) {
                self.start(sig, vars, &text, self.line_no, events);
                return;
            }
        }
        self.trace_line(&text, body);
    }

    /// A debugger prompt waits for input with no newline: look at the unterminated line.
    fn check_prompt(&mut self, events: &mut Vec<Event>) {
        if !self.sigs.has_prompts || self.prompt_fired || self.magic.find(&self.partial).is_some() {
            return;
        }
        if !self.sigs.prefilter.is_match(&self.partial) {
            return;
        }
        let text = clean(&self.partial);
        let body = self.strip_prefix(&text);
        if let Some((sig, vars)) = self.match_start(body, true) {
            self.prompt_fired = true;
            self.start(sig, vars, &text, self.line_no + 1, events);
        }
    }

    fn strip_prefix<'t>(&self, text: &'t str) -> &'t str {
        match &self.sigs.prefix {
            Some(re) => match re.find(text) {
                Some(m) if m.start() == 0 => &text[m.end()..],
                _ => text,
            },
            None => text,
        }
    }

    /// The first signature (in file order) this line starts, unless suppressed.
    fn match_start(&self, body: &str, prompts_only: bool) -> Option<(usize, Vars)> {
        for (i, sig) in self.sigs.signatures.iter().enumerate() {
            if prompts_only && !sig.prompt {
                continue;
            }
            if !sig.literals.iter().any(|l| body.contains(l.as_str())) {
                continue;
            }
            let Some(caps) = sig.start.captures(body) else {
                continue;
            };
            if sig.unless.iter().any(|re| re.is_match(body)) {
                // Not this format; a later signature may still fit.
                continue;
            }
            if self.sigs.suppress.iter().any(|re| re.is_match(body)) {
                // A look-alike (a command line echoing `panic=`, say) starts nothing at all.
                return None;
            }
            let mut vars = Vars::default();
            vars.offer_captures(&sig.start, &caps);
            return Some((i, vars));
        }
        None
    }

    fn start(
        &mut self,
        sig_index: usize,
        vars: Vars,
        text: &str,
        line: u64,
        events: &mut Vec<Event>,
    ) {
        let sigs = Arc::clone(&self.sigs);
        let sig = &sigs.signatures[sig_index];
        if let Some(open) = &mut self.open {
            let open_kind = sigs.signatures[open.sig].kind;
            if sig.continues.contains(&open_kind) {
                // Part of the open report (an `Oops:` line after `BUG: unable to handle...`).
                for (name, value) in vars.iter() {
                    open.vars.offer(name, value);
                }
                self.push_trace(text);
                return;
            }
        }
        self.close();
        let event = Event {
            kind: sig.kind,
            title: title::render(&sigs, &sig.titles, &vars),
            line,
            crash: sig.crash,
            victim: victim(&sigs, &vars),
        };
        events.push(event.clone());
        let index = if self.reports.len() < MAX_REPORTS {
            self.reports.push(Report {
                event: event.clone(),
                lines: vec![text.to_string()],
            });
            Some(self.reports.len() - 1)
        } else {
            self.stats.dropped_reports += 1;
            None
        };
        self.open = Some(Open {
            index,
            sig: sig_index,
            vars,
            lines_left: sig.max_lines.saturating_sub(1),
            in_frames: false,
            event,
        });
        if sig.max_lines <= 1 {
            self.close();
        }
    }

    /// A line inside an open report: keep it, learn variables from it, see if the trace ends.
    fn trace_line(&mut self, text: &str, body: &str) {
        let sigs = Arc::clone(&self.sigs);
        let Some(open) = &mut self.open else { return };
        for rule in &sigs.vars {
            if open.vars.has(&rule.name) {
                continue;
            }
            if let Some(caps) = rule.regex.captures(body) {
                if let Some(m) = caps.name(&rule.name) {
                    let value = m.as_str();
                    let is_function = sigs.function_vars.iter().any(|f| f == &rule.name);
                    if !(is_function && skipped(&sigs, value)) {
                        open.vars.offer(&rule.name, value);
                    }
                }
            }
        }
        if let Some(frames) = &sigs.frames {
            if !open.vars.has("frame") {
                if frames.start.iter().any(|re| re.is_match(body)) {
                    open.in_frames = true;
                } else if open.in_frames {
                    if let Some(func) = frames.frame.captures(body).and_then(|c| c.name("func")) {
                        if !skipped(&sigs, func.as_str()) {
                            open.vars.offer("frame", func.as_str());
                        }
                    }
                }
            }
        }
        let ended = sigs.trace_end.iter().any(|re| re.is_match(body));
        self.push_trace(text);
        if ended {
            self.close();
        }
    }

    fn push_trace(&mut self, text: &str) {
        let Some(open) = &mut self.open else { return };
        if let Some(i) = open.index {
            self.reports[i].lines.push(text.to_string());
        }
        open.lines_left = open.lines_left.saturating_sub(1);
        if open.lines_left == 0 {
            self.close();
        }
    }

    /// Closes the open report: its final title may use variables learnt from the trace.
    fn close(&mut self) {
        let Some(open) = self.open.take() else { return };
        let sig: &Signature = &self.sigs.signatures[open.sig];
        if let Some(i) = open.index {
            let report = &mut self.reports[i];
            report.event.title = title::render(&self.sigs, &sig.titles, &open.vars);
            report.event.victim = victim(&self.sigs, &open.vars).or(open.event.victim);
        }
    }
}

fn victim(sigs: &Signatures, vars: &Vars) -> Option<String> {
    let _ = sigs;
    vars.get("victim")
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// True for functions that are never the culprit (schedulers, reporting helpers, ...).
fn skipped(sigs: &Signatures, func: &str) -> bool {
    let Some(frames) = &sigs.frames else {
        return false;
    };
    let name = clean_function(sigs, func);
    frames.skip.iter().any(|re| re.is_match(&name))
}

/// Counts `\n` bytes. Byte-wide sums over blocks of at most 255 bytes cannot overflow, and the
/// compiler turns them into SIMD compares and adds.
pub fn count_newlines(bytes: &[u8]) -> u64 {
    let mut n = 0u64;
    for block in bytes.chunks(255) {
        n += block.iter().fold(0u8, |acc, &b| acc + (b == b'\n') as u8) as u64;
    }
    n
}
