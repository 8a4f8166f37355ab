//! Saved state of the virtio-mem device.
//!
//! The plugged-block bitmap is the part that matters: the RAM snapshot holds
//! the region's content, and only the bitmap says which of it the guest owns.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::GuestAddress;

use super::bitmap::BlockBitmap;
use super::config::MemConfig;
use super::device::Mem;
use crate::ram::GuestRam;
use crate::size::format_size;
use crate::virtio::persist::{Persist, PersistError, VirtioCommonState};
use crate::virtio::TYPE_MEM;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemState {
    pub virtio: VirtioCommonState,
    /// The configuration the device was created with.
    pub config: MemConfig,
    /// Guest address of the region.
    pub addr: u64,
    /// One bit per block, block `i` at bit `i % 64` of word `i / 64`.
    pub plugged: Vec<u64>,
    /// Redundant with the bitmap; kept to catch a corrupt one.
    pub plugged_size: u64,
    pub requested_size: u64,
    pub usable_region_size: u64,
}

/// What restoring needs besides the state: the device as the restoring VMM
/// configured it, and the RAM with its region already mapped.
pub struct MemRestoreArgs {
    /// Must name the same device with the same size and block size as the
    /// saved one; `requested` is ignored (the saved request wins).
    pub config: MemConfig,
    pub addr: GuestAddress,
    pub ram: Arc<GuestRam>,
}

impl Persist for Mem {
    type State = MemState;
    type RestoreArgs = MemRestoreArgs;

    const DEVICE_TYPE: u32 = TYPE_MEM;
    const STATE_VERSION: u16 = 1;

    fn save(&self) -> MemState {
        MemState {
            virtio: VirtioCommonState::save(&self.common),
            config: self.config.clone(),
            addr: self.addr.0,
            plugged: self.plugged.words().to_vec(),
            plugged_size: self.plugged_size(),
            requested_size: self.requested_size,
            usable_region_size: self.usable_region_size,
        }
    }

    fn restore(args: MemRestoreArgs, state: &MemState) -> Result<Mem, PersistError> {
        let saved = &state.config;
        let ours = &args.config;
        let mut diffs = Vec::new();
        if saved.id != ours.id {
            diffs.push(format!(
                "id '{}' was saved, this VM has '{}'",
                saved.id, ours.id
            ));
        }
        if saved.size != ours.size {
            diffs.push(format!(
                "size={} was saved, this VM has size={}",
                format_size(saved.size),
                format_size(ours.size)
            ));
        }
        if saved.block_size != ours.block_size {
            diffs.push(format!(
                "block-size={} was saved, this VM has block-size={}",
                format_size(saved.block_size),
                format_size(ours.block_size)
            ));
        }
        if state.addr != args.addr.0 {
            diffs.push(format!(
                "the region was at {:#x}, this VM places it at {:#x}",
                state.addr, args.addr.0
            ));
        }
        if !diffs.is_empty() {
            return Err(PersistError::Mismatch(format!(
                "{}: {}; start the VM with the virtio-mem options it was saved with",
                saved.device_name(),
                diffs.join(", ")
            )));
        }

        let bs = saved.block_size;
        // Checked before building so that a corrupt request is reported as
        // corrupt state, not as a bad option.
        if state.requested_size > saved.size || !state.requested_size.is_multiple_of(bs) {
            return Err(PersistError::Invalid(format!(
                "requested size {:#x} is not a whole number of {:#x}-byte blocks within the {:#x}-byte region",
                state.requested_size, bs, saved.size
            )));
        }
        let mut dev = Mem::build(&args.config, args.addr, args.ram, state.requested_size)
            .map_err(|e| PersistError::Mismatch(e.to_string()))?;

        let blocks = dev.plugged.blocks();
        let plugged = BlockBitmap::from_words(state.plugged.clone(), blocks)
            .map_err(|e| PersistError::Invalid(e.to_string()))?;
        if state.usable_region_size != dev.usable_region_size {
            return Err(PersistError::Invalid(format!(
                "usable region size {:#x} differs from the {:#x} this device always uses",
                state.usable_region_size, dev.usable_region_size
            )));
        }
        let from_bits = plugged.count() as u64 * bs;
        if state.plugged_size != from_bits {
            return Err(PersistError::Invalid(format!(
                "plugged size {:#x} does not match the {} plugged blocks of the bitmap ({from_bits:#x} bytes)",
                state.plugged_size,
                plugged.count()
            )));
        }
        state.virtio.restore_into(&mut dev.common)?;
        // The config generation comes from the saved common state; nothing
        // here may bump it, or the driver would see a change that did not happen.
        dev.plugged = plugged;
        Ok(dev)
    }
}
