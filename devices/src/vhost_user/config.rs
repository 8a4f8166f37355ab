//! How the VMM is told to use a vhost-user back end.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ram_requirement;
use crate::ram::RamRequirement;

/// `--vhost-user-blk socket=P[,id=ID][,queues=N]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostUserBlkConfig {
    pub id: String,
    pub socket: PathBuf,
    pub queues: u16,
}

/// `--vhost-user-net socket=P[,mac=MAC][,id=ID]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostUserNetConfig {
    pub id: String,
    pub socket: PathBuf,
    pub mac: [u8; 6],
}

impl VhostUserBlkConfig {
    pub fn ram_requirements(&self) -> Vec<RamRequirement> {
        vec![ram_requirement("vhost-user-blk", &self.id)]
    }
}

impl VhostUserNetConfig {
    pub fn ram_requirements(&self) -> Vec<RamRequirement> {
        vec![ram_requirement("vhost-user-net", &self.id)]
    }
}
