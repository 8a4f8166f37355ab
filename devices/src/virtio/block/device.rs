//! The virtio-blk device: feature offer, config space, queue processing.

use std::mem::{offset_of, size_of};
use std::sync::Arc;

use crate::guest_warn;
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_queue::QueueT;

use super::disk::{BlockError, Disk, SECTOR_SIZE};
use super::request::{
    self, ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS,
    MAX_WRITE_ZEROES_SEG,
};
use super::BlockConfig;
use crate::ram::{GuestRam, PAGE_SIZE};
use crate::virtio::{
    read_config_bytes, ActivateError, VirtioCommon, VirtioDevice, TYPE_BLOCK,
    VIRTIO_RING_F_EVENT_IDX,
};

/// The single request queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request: the queue minus the header and status descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Discard granularity in sectors: a host page, the unit in which punching a
/// hole actually frees space.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = (PAGE_SIZE / SECTOR_SIZE) as u32;

pub const CONFIG_SPACE_SIZE: usize = size_of::<virtio_blk_config>();

/// A virtio-blk device backed by a raw image file.
pub struct Block {
    pub(super) common: VirtioCommon,
    pub(super) config: BlockConfig,
    pub(super) disk: Disk,
    id: [u8; ID_BYTES],
    config_space: [u8; CONFIG_SPACE_SIZE],
}

impl Block {
    /// Opens the image named by `config` (read-only when `config.readonly`).
    pub fn new(config: &BlockConfig, ram: Arc<GuestRam>) -> Result<Block, BlockError> {
        let disk = Disk::open(&config.path, config.readonly)?;
        let features = offered_features(config.readonly, 1);
        let id = serial_id(&config.id);
        let config_space = config_space(disk.capacity_sectors(), config.readonly, 1);
        Ok(Block {
            common: VirtioCommon::new(TYPE_BLOCK, features, &[QUEUE_SIZE], ram),
            config: config.clone(),
            disk,
            id,
            config_space,
        })
    }

    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// Makes the image durable (fsync): every request completed so far is
    /// on disk, with the size and mtime it gave the file.
    pub fn sync_all(&self) -> std::io::Result<()> {
        self.disk.sync_all()
    }

    /// The open image's metadata (fstat), for its identity at a checkpoint.
    pub fn image_metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self.disk.metadata()
    }

    /// Disk size in 512-byte sectors, fixed when the image was opened.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }

    fn process_queue(&mut self) {
        let VirtioCommon { queues, ram, .. } = &mut self.common;
        request::process_queue(&mut queues[0], ram.memory(), &self.disk, &self.id);
    }
}

/// The device features (without VERSION_1) of a disk with `num_queues`
/// request queues. The offer follows from the configuration alone, so a
/// restored device built from the same configuration offers the same
/// features; the vhost-user daemon offers the same set.
pub fn offered_features(readonly: bool, num_queues: u16) -> u64 {
    let mut f = VIRTIO_RING_F_EVENT_IDX
        | 1 << VIRTIO_BLK_F_FLUSH
        | 1 << VIRTIO_BLK_F_BLK_SIZE
        | 1 << VIRTIO_BLK_F_SEG_MAX;
    if readonly {
        f |= 1 << VIRTIO_BLK_F_RO;
    } else {
        f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
    }
    if num_queues > 1 {
        f |= 1 << VIRTIO_BLK_F_MQ;
    }
    f
}

/// The id a disk reports to GET_ID: its configured id, cut or zero-padded
/// to 20 bytes.
pub fn serial_id(id: &str) -> [u8; ID_BYTES] {
    let mut out = [0u8; ID_BYTES];
    let n = id.len().min(ID_BYTES);
    out[..n].copy_from_slice(&id.as_bytes()[..n]);
    out
}

/// `struct virtio_blk_config` in little endian; fields whose feature is not
/// offered stay zero.
pub fn config_space(
    capacity_sectors: u64,
    readonly: bool,
    num_queues: u16,
) -> [u8; CONFIG_SPACE_SIZE] {
    fn put(space: &mut [u8], offset: usize, bytes: &[u8]) {
        space[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
    let mut s = [0u8; CONFIG_SPACE_SIZE];
    put(
        &mut s,
        offset_of!(virtio_blk_config, capacity),
        &capacity_sectors.to_le_bytes(),
    );
    put(
        &mut s,
        offset_of!(virtio_blk_config, seg_max),
        &SEG_MAX.to_le_bytes(),
    );
    put(
        &mut s,
        offset_of!(virtio_blk_config, blk_size),
        &(SECTOR_SIZE as u32).to_le_bytes(),
    );
    if num_queues > 1 {
        put(
            &mut s,
            offset_of!(virtio_blk_config, num_queues),
            &num_queues.to_le_bytes(),
        );
    }
    if !readonly {
        for (offset, value) in [
            (
                offset_of!(virtio_blk_config, max_discard_sectors),
                MAX_DISCARD_SECTORS,
            ),
            (
                offset_of!(virtio_blk_config, max_discard_seg),
                MAX_DISCARD_SEG,
            ),
            (
                offset_of!(virtio_blk_config, discard_sector_alignment),
                DISCARD_SECTOR_ALIGNMENT,
            ),
            (
                offset_of!(virtio_blk_config, max_write_zeroes_sectors),
                MAX_WRITE_ZEROES_SECTORS,
            ),
            (
                offset_of!(virtio_blk_config, max_write_zeroes_seg),
                MAX_WRITE_ZEROES_SEG,
            ),
        ] {
            put(&mut s, offset, &value.to_le_bytes());
        }
        // WRITE_ZEROES with UNMAP punches a hole.
        s[offset_of!(virtio_blk_config, write_zeroes_may_unmap)] = 1;
    }
    s
}

impl VirtioDevice for Block {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing is writable: writeback caching (CONFIG_WCE) is not offered.
        guest_warn!(
            "virtio-blk: driver wrote {} bytes at config offset {offset}; the block config is read-only, ignored",
            data.len()
        );
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        self.common.prepare_activation()
    }

    fn queue_notify(&mut self, index: u16) {
        if index != 0 {
            guest_warn!("virtio-blk: notification for queue {index}, but the device has only queue 0; ignored");
            return;
        }
        if !self.common.activated {
            guest_warn!("virtio-blk: queue notified before the device was activated; ignored");
            return;
        }
        if !self.common.queues[0].ready() {
            guest_warn!("virtio-blk: queue 0 notified but not ready; ignored");
            return;
        }
        self.process_queue();
        self.common.notify_queue(0);
    }

    fn reset(&mut self) {
        self.common.reset();
    }
}
