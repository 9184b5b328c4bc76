//! What the guest payload and the harness share: the cell plan the harness hands to the guest,
//! the framed result lines the guest sends back, the scenarios' parameters (checked on the host
//! before anything boots, parsed by the payload to run) and the pure statistics both sides
//! compute.
//!
//! This library has no OS-specific code so the host-side harness can link it; the payload's
//! own scenarios live in the binary.

pub mod frame;
pub mod kmem;
pub mod memory_evidence;
pub mod params;
pub mod plan;
pub mod registry;
pub mod stats;
pub mod stress_ng;
