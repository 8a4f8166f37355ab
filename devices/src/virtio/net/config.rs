use serde::{Deserialize, Serialize};

use crate::ram::RamRequirement;

/// `--net tap=NAME[,mac=MAC][,id=ID]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    pub id: String,
    pub tap: String,
    pub mac: [u8; 6],
}

impl NetConfig {
    /// The in-process device reads and writes guest RAM in this process only.
    pub fn ram_requirements(&self) -> Vec<RamRequirement> {
        Vec::new()
    }
}
