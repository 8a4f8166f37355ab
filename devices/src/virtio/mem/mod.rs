//! virtio-mem: a guest-physical region of its own that the guest plugs and
//! unplugs block by block, so that guest memory can grow and shrink at run
//! time without ballooning boot RAM.

mod bitmap;
mod config;
mod device;
mod persist;
#[cfg(test)]
mod tests;

pub use bitmap::{BitmapError, BlockBitmap};
pub use config::*;
pub use device::*;
pub use persist::{MemRestoreArgs, MemState};
