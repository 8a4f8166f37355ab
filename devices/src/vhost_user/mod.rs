//! vhost-user: devices whose backend runs in another process and maps guest RAM itself.

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
