//! The traditional virtio memory balloon (virtio 1.x, 5.5): inflation,
//! deflation, memory statistics and free page reporting.
//!
//! Every page the guest gives up is discarded through the RAM layer
//! (`GuestRam::discard`), which knows whether the backing can do it: on a
//! template clone (private file mapping) a discard would show the file's
//! content again, so the RAM layer refuses it and the device reports that
//! refusal instead of pretending the memory was returned.

mod config;
mod device;
mod persist;
#[cfg(test)]
mod tests;

pub use config::*;
pub use device::*;
pub use persist::*;
