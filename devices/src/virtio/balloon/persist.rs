//! The balloon's saved state and its conversion both ways.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::BalloonConfig;
use super::device::{Balloon, BalloonCounters, BalloonQueue, MAX_STATS_ENTRIES};
use crate::ram::{GuestRam, PAGE_SIZE};
use crate::virtio::persist::{Persist, PersistError, VirtioCommonState};
use crate::virtio::TYPE_BALLOON;

/// Everything about the balloon that changes at run time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonState {
    pub virtio: VirtioCommonState,
    /// The configuration, with the target as last set: it decides the
    /// features offered and so the queues.
    pub config: BalloonConfig,
    /// Boot RAM size when saved; `num_pages` and `actual` count against it.
    pub ram_size: u64,
    pub num_pages: u32,
    pub actual: u32,
    /// Latest statistics, sorted by tag.
    pub stats: Vec<(u16, u64)>,
    /// Head of the stats buffer the device holds. The queue's `next_avail`
    /// is already past it, so without this the device could never return
    /// it and the driver would stop sending statistics.
    pub stats_head: Option<u16>,
    pub counters: BalloonCounters,
}

impl Persist for Balloon {
    type State = BalloonState;
    type RestoreArgs = Arc<GuestRam>;

    const DEVICE_TYPE: u32 = TYPE_BALLOON;
    const STATE_VERSION: u16 = 1;

    fn save(&self) -> BalloonState {
        BalloonState {
            virtio: VirtioCommonState::save(&self.common),
            config: self.config.clone(),
            ram_size: self.ram_size,
            num_pages: self.num_pages,
            actual: self.actual,
            stats: self.stats.iter().map(|(&t, &v)| (t, v)).collect(),
            stats_head: self.stats_head,
            counters: self.counters.clone(),
        }
    }

    fn restore(ram: Arc<GuestRam>, state: &BalloonState) -> Result<Self, PersistError> {
        let mut dev = Balloon::new(&state.config, ram)
            .map_err(|e| PersistError::Invalid(format!("saved balloon configuration: {e}")))?;
        if state.ram_size != dev.ram_size {
            return Err(PersistError::Mismatch(format!(
                "the balloon was saved with {} bytes of boot RAM but this VM has {}; restore with the memory size it was saved with",
                state.ram_size, dev.ram_size
            )));
        }
        let ram_pages = dev.ram_size / PAGE_SIZE;
        if u64::from(state.num_pages) > ram_pages {
            return Err(PersistError::Invalid(format!(
                "the balloon asks for {} pages but boot RAM has only {ram_pages}",
                state.num_pages
            )));
        }
        if state.stats.len() > MAX_STATS_ENTRIES {
            return Err(PersistError::Invalid(format!(
                "{} statistics saved, more than the {MAX_STATS_ENTRIES} a stats buffer can carry",
                state.stats.len()
            )));
        }
        if state.stats.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(PersistError::Invalid(
                "statistics are not sorted by tag without duplicates".into(),
            ));
        }
        state.virtio.restore_into(&mut dev.common)?;
        if let Some(head) = state.stats_head {
            let index = dev.queue_index(BalloonQueue::Stats).ok_or_else(|| {
                PersistError::Invalid(
                    "a stats buffer is held but the driver did not negotiate the stats queue"
                        .into(),
                )
            })?;
            if !dev.common.activated {
                return Err(PersistError::Invalid(
                    "a stats buffer is held by a device that is not active".into(),
                ));
            }
            let size = dev.common.queues[usize::from(index)].state().size;
            if head >= size {
                return Err(PersistError::Invalid(format!(
                    "held stats buffer {head} is outside the stats queue of size {size}"
                )));
            }
        }
        dev.num_pages = state.num_pages;
        dev.actual = state.actual;
        dev.stats = state.stats.iter().copied().collect();
        dev.stats_head = state.stats_head;
        dev.counters = state.counters.clone();
        Ok(dev)
    }
}
