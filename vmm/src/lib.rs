//! The `vmm` library: configuration, guest memory layout, host checks.

pub mod boot;
pub mod bus;
pub mod config;
pub mod control;
pub mod event_loop;
pub mod exit;
pub mod host_check;
pub mod kvlist;
pub mod layout;
pub mod lifecycle;
pub mod machine;
pub mod memory;
pub mod platform;
pub mod snapshot;
pub mod template;
pub mod transport;
pub mod vstate;
