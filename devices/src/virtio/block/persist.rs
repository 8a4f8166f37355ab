//! Saving and restoring a block device.
//!
//! The image file itself is not part of the state: it is reopened from the
//! configured path, and must still be the size it was, or every sector
//! number the guest holds would point somewhere else. The path may differ
//! from the saved one: a template clone runs on its own copy of the
//! template's disk (whether the content is the saved one is the VMM's
//! check: identities for CPR, the template manifest for clones).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Block, BlockConfig};
use crate::ram::GuestRam;
use crate::virtio::persist::{Persist, PersistError, VirtioCommonState};
use crate::virtio::TYPE_BLOCK;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub virtio: VirtioCommonState,
    pub config: BlockConfig,
    pub capacity_sectors: u64,
}

impl Persist for Block {
    type State = BlockState;
    /// The configuration the VMM was started with, and guest RAM. The
    /// interrupt is not restored: the transport installs its own afterwards.
    type RestoreArgs = (BlockConfig, Arc<GuestRam>);

    const DEVICE_TYPE: u32 = TYPE_BLOCK;
    const STATE_VERSION: u16 = 1;

    fn save(&self) -> BlockState {
        BlockState {
            virtio: VirtioCommonState::save(&self.common),
            config: self.config.clone(),
            capacity_sectors: self.disk.capacity_sectors(),
        }
    }

    fn restore(
        (config, ram): (BlockConfig, Arc<GuestRam>),
        state: &BlockState,
    ) -> Result<Self, PersistError> {
        check_config(&config, &state.config)?;
        let mut dev = Block::new(&config, ram).map_err(|e| PersistError::Device(e.to_string()))?;
        if dev.capacity_sectors() != state.capacity_sectors {
            return Err(PersistError::Mismatch(format!(
                "disk image {} now holds {} sectors but the saved device had {}; restore with the image as it was when the state was saved",
                config.path.display(),
                dev.capacity_sectors(),
                state.capacity_sectors
            )));
        }
        state.virtio.restore_into(&mut dev.common)?;
        Ok(dev)
    }
}

/// Another access mode or id would silently change what the guest sees
/// (and the feature offer), so those must be the saved ones.
fn check_config(given: &BlockConfig, saved: &BlockConfig) -> Result<(), PersistError> {
    let field = if given.readonly != saved.readonly {
        format!("readonly={} (saved: {})", given.readonly, saved.readonly)
    } else if given.id != saved.id {
        format!("id {:?} (saved: {:?})", given.id, saved.id)
    } else {
        return Ok(());
    };
    Err(PersistError::Mismatch(format!(
        "disk {:?} is configured with {field}; start the VMM with the disk options it was saved with",
        saved.id
    )))
}
