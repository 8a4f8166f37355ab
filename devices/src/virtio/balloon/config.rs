use serde::{Deserialize, Serialize};

use crate::ram::policy::{Need, Scope};
use crate::ram::{RamRequirement, PAGE_SIZE};

/// `--balloon [free-page-reporting=on|off][,deflate-on-oom=on|off][,stats=on|off][,target=SIZE]`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonConfig {
    pub free_page_reporting: bool,
    pub deflate_on_oom: bool,
    pub stats: bool,
    /// Guest memory size to aim for, in bytes (as QEMU's `balloon` command):
    /// below the RAM size the balloon inflates by the difference.
    pub target: Option<u64>,
}

/// What inflating the balloon needs: pages it takes must be discarded.
pub fn inflation_requirement(option: String) -> RamRequirement {
    RamRequirement {
        device: "balloon".into(),
        option,
        need: Need::Discard {
            granularity: PAGE_SIZE,
        },
        scope: Scope::AllRam,
        why: "inflating the balloon discards the pages the guest gives up so that they read back as zero and free host memory".into(),
        fix: "leave target unset (or equal to the memory size) so the balloon never inflates".into(),
    }
}

impl BalloonConfig {
    /// `ram_size` is the boot RAM size: a target below it inflates at start.
    pub fn ram_requirements(&self, ram_size: u64) -> Vec<RamRequirement> {
        let mut reqs = Vec::new();
        if self.free_page_reporting {
            reqs.push(RamRequirement {
                device: "balloon".into(),
                option: "free-page-reporting=on".into(),
                need: Need::Discard {
                    granularity: PAGE_SIZE,
                },
                scope: Scope::AllRam,
                why: "free page reporting discards the pages the guest reports free so that they read back as zero".into(),
                fix: "set free-page-reporting=off".into(),
            });
        }
        if let Some(t) = self.target.filter(|&t| t < ram_size) {
            reqs.push(inflation_requirement(format!(
                "target={}",
                crate::size::format_size(t)
            )));
        }
        reqs
    }
}
