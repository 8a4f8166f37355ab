use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ram::RamRequirement;

/// `--disk path=P[,readonly=on][,id=ID]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockConfig {
    pub id: String,
    pub path: PathBuf,
    pub readonly: bool,
}

impl BlockConfig {
    /// The in-process device reads and writes guest RAM in this process only.
    pub fn ram_requirements(&self) -> Vec<RamRequirement> {
        Vec::new()
    }
}
