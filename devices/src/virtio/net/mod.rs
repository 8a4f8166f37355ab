//! virtio-net backed by a TAP interface.
//!
//! Packets keep their `virtio_net_hdr_v1` all the way between guest and
//! TAP, so checksum and segmentation offloads are carried out by the host
//! kernel rather than by the VMM.

mod config;
mod device;
mod persist;
mod ring;
mod rx;
mod rx_retry;
pub mod tap;
mod tx;

pub use config::*;
pub use device::*;
pub use persist::NetState;
pub use ring::QueueRun;
pub use rx::RxQueue;
pub use rx_retry::RxRetry;
pub use tap::{Tap, TapError};
pub use tx::process_tx;

#[cfg(test)]
mod tests;
