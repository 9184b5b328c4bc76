//! The `sweep` verb: where a cell stops surviving, per RAM size and variant.
pub mod search;
pub mod stats;
