use serde::{Deserialize, Serialize};

use crate::ram::policy::{Need, Scope};
use crate::ram::{BackingSpec, RamRequirement, RegionRole};

/// `--virtio-mem size=S[,requested=R][,block-size=B][,backing=anon|memfd][,id=ID]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemConfig {
    pub id: String,
    /// Size of the device's own region: the most it can ever plug.
    pub size: u64,
    /// Size the guest is asked to plug.
    pub requested: u64,
    pub block_size: u64,
    pub backing: BackingSpec,
}

/// Linux needs at least a pageblock (2 MiB on x86-64) per virtio-mem block.
pub const MIN_BLOCK_SIZE: u64 = 2 << 20;

impl MemConfig {
    pub fn device_name(&self) -> String {
        format!("virtio-mem '{}'", self.id)
    }

    pub fn ram_requirements(&self) -> Vec<RamRequirement> {
        let mut reqs = vec![RamRequirement {
            device: self.device_name(),
            option: "plug/unplug".into(),
            need: Need::Discard {
                granularity: self.block_size,
            },
            scope: Scope::Region(RegionRole::VirtioMem(self.id.clone())),
            why: "unplugging a block discards it so that it reads back as zero and returns host memory".into(),
            fix: "give virtio-mem an anonymous backing (backing=anon) or backing=memfd".into(),
        }];
        if self.requested > 0 {
            reqs.push(RamRequirement {
                device: self.device_name(),
                option: format!("requested={}", crate::size::format_size(self.requested)),
                need: Need::NothingPluggedInTemplate,
                scope: Scope::Region(RegionRole::VirtioMem(self.id.clone())),
                why: "a template is saved with its RAM file only".into(),
                fix: "create the template with requested=0 and resize virtio-mem in each clone"
                    .into(),
            });
        }
        reqs
    }
}
