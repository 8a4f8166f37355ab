//! virtio-blk (virtio 1.x, 5.2) over a raw image file.

mod config;
mod device;
mod disk;
mod persist;
mod request;
#[cfg(test)]
mod tests;

pub use config::*;
pub use device::{
    config_space, offered_features, serial_id, Block, CONFIG_SPACE_SIZE, DISCARD_SECTOR_ALIGNMENT,
    QUEUE_SIZE, SEG_MAX,
};
pub use disk::{BlockError, Disk, SECTOR_SIZE};
pub use persist::BlockState;
pub use request::{
    process_queue, Request, ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG,
    MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG,
};
