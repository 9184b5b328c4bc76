//! TODO (issue 3): being written.

pub mod gnumach;
pub mod grub;
pub mod mach_task;
