//! What runs inside the guest, built on the host: the static Linux payload ([`payload`]), the
//! GNU Mach bootstrap task ([`mach_task`]), bundles of Debian tools a scenario runs in the
//! guest ([`tools`]) and the portable C agent that recipe guests compile themselves
//! ([`portable`]).

pub mod mach_task;
pub mod payload;
pub mod portable;
pub mod tools;
