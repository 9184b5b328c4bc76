//! One log's verdict from its reports: the first real crash wins the title; later crashes are
//! kept as secondary (an Oops followed by "Kernel panic - not syncing: Fatal exception" is one
//! crash titled by the Oops); events that are not crashes (OOM kills) are listed apart.

use super::{CrashReport, Event};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The first crash in the log, if any.
    pub crash: Option<Event>,
    /// Crashes after the first one.
    pub secondary: Vec<Event>,
    /// Everything recognised, crashes and events, in log order.
    pub events: Vec<Event>,
}

impl Summary {
    pub fn of(reports: &[CrashReport]) -> Summary {
        let events: Vec<Event> = reports.iter().map(|r| r.event.clone()).collect();
        let mut crashes = events.iter().filter(|e| e.crash).cloned();
        let crash = crashes.next();
        Summary {
            crash,
            secondary: crashes.collect(),
            events,
        }
    }

    pub fn crashed(&self) -> bool {
        self.crash.is_some()
    }

    /// Non-crash events (OOM kills, ...).
    pub fn non_crash_events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(|e| !e.crash)
    }
}
