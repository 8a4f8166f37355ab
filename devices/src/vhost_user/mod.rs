//! vhost-user: devices whose backend runs in another process and maps guest RAM itself.
//!
//! The daemons (`vhost-user-blk`, `vhost-user-net`) serve the in-process
//! devices' request code over the vhost-user protocol.

pub mod block;
pub mod cli;
mod config;
mod device;
pub mod frontend;
mod kick_watch;
pub mod net;
pub mod serve;

pub use block::{BlockBackend, BlockDaemonConfig};
pub use config::{VhostUserBlkConfig, VhostUserNetConfig};
pub use device::{watch_backend, VhostUserDevice, VhostUserDeviceError};
pub use net::{NetBackend, NetDaemonConfig};
pub use serve::{serve, DaemonDevice, ServeError};

use crate::ram::policy::{Need, Scope};
use crate::ram::RamRequirement;

/// What any vhost-user device needs: all of guest RAM shared through fds.
pub fn ram_requirement(device: &str, id: &str) -> RamRequirement {
    RamRequirement {
        device: format!("{device} '{id}'"),
        option: "socket".into(),
        need: Need::Share,
        scope: Scope::AllRam,
        why: "the vhost-user backend maps guest RAM from fds and reads and writes it in its own process".into(),
        fix: "use backing=memfd,share=on or backing=file,share=on; a template clone (share=off) cannot use vhost-user, use the in-process device instead".into(),
    }
}
