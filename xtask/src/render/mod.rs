//! Stored results turned into what people read: terminal tables ([`text`]) and the
//! self-contained `report.html` ([`html`]). Renderers read typed records from the results
//! store and print or write nothing themselves; verbs decide where the output goes.

pub mod html;
pub mod text;
