//! `bisect-run`: one step of `git bisect run` on one cell, with a sequential decision rule
//! ([`rule`]) that flaky and unrelated crashes do not fool, and a log every step appends to.

pub mod log;
pub mod real;
pub mod rule;
pub mod run;
pub mod sim;
