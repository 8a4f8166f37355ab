//! VM templates: one paused VM whose RAM stays in a file, and clones that
//! map that file privately and resume from its saved state
//! (docs/templating.md).
//!
//! A template directory holds `memory` (the RAM, mapped share=on while the
//! template ran), `state` (the VM's saved state without RAM), one
//! `disk-ID.img` per writable disk (its content at the pause), and
//! `template.json` (what it was made from, identities and checksums).
//! After creation nothing writes any of them: they are made read-only.

pub mod clone;
pub mod copy;
pub mod create;
pub mod lock;
pub mod manifest;
pub mod status;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TemplateError {
    /// Invalid options or a template that cannot be used: nothing ran.
    #[error("{0}")]
    Refused(String),
    /// Something failed while running.
    #[error("{0}")]
    Failed(String),
}

impl TemplateError {
    /// The exit status: 2 for a refusal (as `vmm run`), 1 for a failure.
    pub fn status(&self) -> u8 {
        match self {
            TemplateError::Refused(_) => 2,
            TemplateError::Failed(_) => 1,
        }
    }
}

/// "pid 12 (shared), pid 34 (exclusive)".
pub fn describe_holders(holders: &[lock::Holder]) -> String {
    holders
        .iter()
        .map(|h| {
            format!(
                "pid {} ({})",
                h.pid,
                match h.kind {
                    lock::LockKind::Shared => "clone",
                    lock::LockKind::Exclusive => "creating",
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
