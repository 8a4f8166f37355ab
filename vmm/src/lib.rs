//! The `vmm` library: configuration, guest memory layout, host checks.

pub mod config;
pub mod host_check;
pub mod kvlist;
pub mod layout;
pub mod memory;
