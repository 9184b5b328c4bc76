//! One module per verb of `cargo xtask`. Verbs sit on top of everything else: they load what
//! the user asked for, prepare a [`crate::session::Session`], run cells into the results store,
//! and are the only ones that print tables or render reports.

pub mod ab;
pub mod bench;
pub mod bisect;
pub mod build;
pub mod clean;
pub mod compare;
pub mod list;
pub mod replay;
pub mod report;
pub mod run;
pub mod sweep;
pub mod test;
pub mod verify;
