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
use super::signatures::{Signature, Signatures, Stack, MAX_LINE};
use super::title::{self, clean_function, Vars};
use super::{CrashReport, Event};
use memchr::{memchr, memmem, memrchr};
use std::sync::Arc;

/// Reports kept in memory; later ones are still reported as events, and counted.
const MAX_REPORTS: usize = 1000;

/// Frames kept per report while its guilty frame cannot be chosen yet.
const MAX_FRAMES: usize = 64;

/// Lines of other printk contexts an open report lets pass, per line of its own it may hold,
/// before it is closed: interleaved output is skipped, but not forever.
const FOREIGN_LINES_PER_LINE: usize = 4;

/// Where an open report is in its stack trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FramesAt {
    /// Before the first stack-start line.
    Before,
    /// Inside a stack: frame lines count.
    In,
    /// The frames that decide the title are collected.
    Done,
}

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
    frames_at: FramesAt,
    /// Candidate frames (function names not on the file's skip list), in stack order.
    frames: Vec<String>,
    event: Event,
    /// The printk caller of the start line (`T123`, `C1`), when the console shows it: lines of
    /// other callers are another task's output interleaved with this report.
    ctx: Option<String>,
    /// Lines of any CPU context belong to the report (after "Sending NMI from CPU ...").
    all_cpus: bool,
    /// Lines of other contexts still let pass.
    foreign_left: usize,
}

impl Open {
    /// True for a line of another printk context than the report's.
    fn is_foreign(&self, line_ctx: Option<&str>) -> bool {
        match (&self.ctx, line_ctx) {
            (None, _) => false,
            (Some(own), Some(other)) if own == other => false,
            (Some(_), Some(other)) if self.all_cpus && other.starts_with('C') => false,
            _ => true,
        }
    }
}

pub struct Engine {
    sigs: Arc<Signatures>,
    magic: memmem::Finder<'static>,
    /// The current unterminated line (its first MAX_LINE bytes).
    partial: Vec<u8>,
    /// True once the current unterminated line has fired a prompt signature.
    prompt_fired: bool,
    line_no: u64,
    reports: Vec<CrashReport>,
    open: Option<Open>,
    stats: Stats,
    /// Bit i: `arms[i]` was seen on an earlier line.
    seen_arms: u64,
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
            seen_arms: 0,
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

    pub fn finish(mut self) -> Vec<CrashReport> {
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
        let arms = self.arms_in(raw);
        self.judge(raw, events);
        // A line arms signatures for the lines after it, never for itself.
        self.seen_arms |= arms;
    }

    /// The arming literals this line holds that were not seen before.
    fn arms_in(&self, raw: &[u8]) -> u64 {
        let all = (1u64 << self.sigs.arms.len()) - 1;
        if self.seen_arms == all || self.magic.find(raw).is_some() {
            return 0;
        }
        let mut found = 0;
        for (i, lit) in self.sigs.arms.iter().enumerate() {
            if self.seen_arms & (1 << i) == 0 && memmem::find(raw, lit.as_bytes()).is_some() {
                found |= 1 << i;
            }
        }
        found
    }

    /// Matches one capped line: it starts a report, continues the open one, or is ignored.
    fn judge(&mut self, raw: &[u8], events: &mut Vec<Event>) {
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
        let (body, line_ctx) = self.strip_prefix(&text);
        if self.open.as_ref().is_some_and(|o| o.is_foreign(line_ctx)) {
            self.foreign_line(&text, body, candidate, events);
            return;
        }
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
            if let Some((sig, vars)) = self.match_start(&text, body, false) {
                self.start(sig, vars, &text, line_ctx, self.line_no, events);
                return;
            }
        }
        self.trace_line(&text, body);
    }

    /// A line of another printk context while a report is open: not part of the report. It
    /// may start a report of its own once the open one has the frames its title needs.
    fn foreign_line(&mut self, text: &str, body: &str, candidate: bool, events: &mut Vec<Event>) {
        let Some(open) = &mut self.open else { return };
        let settled = open.frames_at == FramesAt::Done;
        open.foreign_left = open.foreign_left.saturating_sub(1);
        if open.foreign_left == 0 {
            self.close();
        }
        if !candidate || (self.open.is_some() && !settled) {
            return;
        }
        if let Some((sig, vars)) = self.match_start(text, body, false) {
            let (_, line_ctx) = self.strip_prefix(text);
            let line_ctx = line_ctx.map(str::to_string);
            self.start(sig, vars, text, line_ctx.as_deref(), self.line_no, events);
        }
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
        let (body, line_ctx) = self.strip_prefix(&text);
        if self.open.as_ref().is_some_and(|o| o.is_foreign(line_ctx)) {
            return;
        }
        if let Some((sig, vars)) = self.match_start(&text, body, true) {
            self.prompt_fired = true;
            let line_ctx = line_ctx.map(str::to_string);
            self.start(
                sig,
                vars,
                &text,
                line_ctx.as_deref(),
                self.line_no + 1,
                events,
            );
        }
    }

    /// The line without its console prefix, and the printk context the prefix names.
    fn strip_prefix<'t>(&self, text: &'t str) -> (&'t str, Option<&'t str>) {
        let Some(re) = &self.sigs.prefix else {
            return (text, None);
        };
        if !self.sigs.prefix_has_ctx {
            return match re.find(text) {
                Some(m) if m.start() == 0 => (&text[m.end()..], None),
                _ => (text, None),
            };
        }
        match re.captures(text) {
            Some(c) if c.get(0).is_some_and(|m| m.start() == 0) => {
                let end = c.get(0).map_or(0, |m| m.end());
                (&text[end..], c.name("ctx").map(|m| m.as_str()))
            }
            _ => (text, None),
        }
    }

    /// The first signature (in file order) this line starts, unless suppressed.
    /// `text` is the whole cleaned line, `body` the same without the console prefix.
    fn match_start(&self, text: &str, body: &str, prompts_only: bool) -> Option<(usize, Vars)> {
        for (i, sig) in self.sigs.signatures.iter().enumerate() {
            let body = if sig.whole_line { text } else { body };
            if prompts_only && !sig.prompt {
                continue;
            }
            if sig.inside_only
                && !self
                    .open
                    .as_ref()
                    .is_some_and(|o| sig.continues.contains(&self.sigs.signatures[o.sig].kind))
            {
                continue;
            }
            if !sig.armed_by.is_empty()
                && !sig.armed_by.iter().any(|&a| self.seen_arms & (1 << a) != 0)
            {
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
        line_ctx: Option<&str>,
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
        let title = title::render(&sigs, &sig.titles, &vars);
        let event = Event {
            kind: sig.kind,
            alt_titles: alternatives(&sigs, sig, &vars, &title),
            title,
            line,
            crash: sig.crash,
            victim: victim(&sigs, &vars),
            corrupted: sig.corrupted,
        };
        events.push(event.clone());
        let index = if self.reports.len() < MAX_REPORTS {
            self.reports.push(CrashReport {
                event: event.clone(),
                lines: vec![text.to_string()],
            });
            Some(self.reports.len() - 1)
        } else {
            self.stats.dropped_reports += 1;
            None
        };
        let from_first_line = sig.stack.as_ref().is_some_and(|s| s.start.is_empty());
        self.open = Some(Open {
            index,
            sig: sig_index,
            vars,
            lines_left: sig.max_lines.saturating_sub(1),
            frames_at: if from_first_line {
                FramesAt::In
            } else {
                FramesAt::Before
            },
            frames: Vec::new(),
            event,
            ctx: line_ctx.map(str::to_string),
            all_cpus: false,
            foreign_left: sig.max_lines.saturating_mul(FOREIGN_LINES_PER_LINE),
        });
        if sig.max_lines <= 1 {
            self.close();
        }
    }

    /// A line inside an open report: keep it, learn variables from it, see if the trace ends.
    fn trace_line(&mut self, text: &str, body: &str) {
        let sigs = Arc::clone(&self.sigs);
        let Some(open) = &mut self.open else { return };
        if !open.all_cpus
            && sigs
                .other_cpus_after
                .iter()
                .any(|l| body.contains(l.as_str()))
        {
            open.all_cpus = true;
        }
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
        if let Some(stack) = &sigs.signatures[open.sig].stack {
            collect_frame(&sigs, stack, open, body);
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
        let sigs = &self.sigs;
        let sig: &Signature = &sigs.signatures[open.sig];
        let Some(i) = open.index else { return };
        let mut vars = open.vars;
        if let Some(frame) = sig
            .stack
            .as_ref()
            .and_then(|s| guilty_frame(s, &open.frames))
        {
            vars.offer("frame", &frame);
        }
        let (used, mut title) = title::render_indexed(sigs, &sig.titles, &vars);
        let mut corrupted = sig.corrupted;
        if !sig.corrupted_title.is_empty() && used + 1 == sig.titles.len() {
            // Only the start-line template fitted: the trace named no culprit.
            title = title::render(sigs, &sig.corrupted_title, &vars);
            corrupted = true;
        }
        corrupted |= sigs.corrupted_titles.iter().any(|re| re.is_match(&title));
        let report = &mut self.reports[i];
        report.event.alt_titles = alternatives(sigs, sig, &vars, &title);
        report.event.title = title;
        report.event.corrupted = corrupted;
        report.event.victim = victim(sigs, &vars).or(open.event.victim);
    }
}

/// The alternative titles that fit, without the title itself and without repeats.
fn alternatives(sigs: &Signatures, sig: &Signature, vars: &Vars, title: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for choices in &sig.alt_titles {
        if let Some(alt) = title::render_first(sigs, choices, vars) {
            if alt != title && !out.contains(&alt) {
                out.push(alt);
            }
        }
    }
    out
}

fn victim(sigs: &Signatures, vars: &Vars) -> Option<String> {
    let _ = sigs;
    vars.get("victim")
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// True for functions that are never the culprit (schedulers, reporting helpers, ...).
fn skipped(sigs: &Signatures, func: &str) -> bool {
    let Some(skip) = sigs.frames.as_ref().and_then(|f| f.skip.as_ref()) else {
        return false;
    };
    skip.is_match(&clean_function(sigs, func))
}

/// Follows an open report's stack: notes where frames start and keeps candidate frames.
fn collect_frame(sigs: &Signatures, stack: &Stack, open: &mut Open, body: &str) {
    if open.frames_at == FramesAt::Done {
        return;
    }
    if stack.start.iter().any(|re| re.is_match(body)) {
        // A second stack after frames were found belongs to something else (another task).
        open.frames_at = if open.frames.is_empty() {
            FramesAt::In
        } else {
            FramesAt::Done
        };
        return;
    }
    if open.frames_at != FramesAt::In {
        return;
    }
    let Some(func) = stack
        .frame
        .iter()
        .find_map(|re| re.captures(body).and_then(|c| c.name("func")))
    else {
        return;
    };
    let name = clean_function(sigs, func.as_str());
    if name.is_empty() || skipped(sigs, &name) {
        return;
    }
    let matches = |re: &Option<regex::Regex>| re.as_ref().is_some_and(|r| r.is_match(&name));
    if matches(&stack.skip) && !matches(&stack.prefer) {
        // Skipped frames never count, not even as the end of a stack.
        return;
    }
    open.frames.push(name);
    if !stack.needs_all_frames() || open.frames.len() >= MAX_FRAMES {
        open.frames_at = FramesAt::Done;
    }
}

/// The guilty frame among a report's candidate frames, by the signature's stack rules: a
/// preferred frame first; else, past the signature's own skips, the caller of the first anchor
/// frame (or the first frame).
fn guilty_frame(stack: &Stack, frames: &[String]) -> Option<String> {
    if let Some(prefer) = &stack.prefer {
        if let Some(f) = frames.iter().find(|f| prefer.is_match(f)) {
            return Some(renamed(stack, f));
        }
    }
    let kept: Vec<&String> = frames
        .iter()
        .filter(|f| !stack.skip.as_ref().is_some_and(|s| s.is_match(f)))
        .collect();
    let chosen = match &stack.anchors {
        Some(anchors) => match kept.iter().position(|f| anchors.is_match(f)) {
            Some(i) => kept[i.saturating_sub(1)],
            None => *kept.first()?,
        },
        None => *kept.first()?,
    };
    let chosen = match &stack.strip {
        Some(re) => re.replace(chosen, "").into_owned(),
        None => chosen.clone(),
    };
    Some(renamed(stack, &chosen))
}

/// The frame's group name from the stack's `rename` rules, or the frame itself.
fn renamed(stack: &Stack, frame: &str) -> String {
    match stack.rename.iter().find(|(re, _)| re.is_match(frame)) {
        Some((_, to)) => to.clone(),
        None => frame.to_string(),
    }
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
