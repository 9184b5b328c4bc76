//! The portable C agent (`guest-payload/portable/kstorm-portable.c`): the scenarios for guests
//! the static Linux payload cannot run on, compiled in the guest by its own compiler
//! (`guest::driver` uploads and compiles it).

/// The agent's source.
pub const AGENT_SOURCE: &str = include_str!("../../../guest-payload/portable/kstorm-portable.c");
