//! Device models for the VMM: guest RAM and its policy, virtio devices and
//! their saved state, vhost-user.

pub mod log_limit;
pub mod ram;
pub mod size;
pub mod vhost_user;
pub mod virtio;
