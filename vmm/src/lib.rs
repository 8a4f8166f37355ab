//! The `vmm` library: configuration, guest memory layout, host checks.

pub mod boot;
pub mod config;
pub mod host_check;
pub mod kvlist;
pub mod layout;
pub mod memory;
pub mod transport;
