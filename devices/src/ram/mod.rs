//! Guest RAM: how it is backed, what that backing allows, and the policy that
//! refuses device configurations the backing cannot honour.
//!
//! The facts that matter for VM templating are two: whether a range of RAM
//! can be *discarded* so that it reads back as zero (balloon, virtio-mem),
//! and whether RAM can be *shared* with another process through an fd
//! (vhost-user). Private file-backed RAM (a template clone) can do neither.

mod backing;
mod discard;
mod guest_ram;
mod host_mapping;
pub mod policy;

pub use backing::{BackingError, BackingKind, BackingSpec, RamBacking, RomMode};
pub use discard::DiscardError;
pub use guest_ram::{
    preflight, GuestMemoryMmap, GuestRam, GuestRamBuilder, GuestRamError, RamRegion, RegionRole,
};
pub use policy::{check, Need, PolicyError, RamRequirement, Refusal};

/// Size of a host base page; balloon pages and discard granularity are in these units.
pub const PAGE_SIZE: u64 = 4096;

#[cfg(test)]
mod tests;
