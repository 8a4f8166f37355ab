//! What the user asked for (`BackingSpec`) and the validated facts about it (`RamBacking`).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where guest RAM pages come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackingKind {
    /// Private anonymous memory (the default).
    Anonymous,
    /// A memfd, created by the VMM.
    Memfd,
    /// A file at the given path (the template file, typically on tmpfs).
    File(PathBuf),
}

/// `rom=`: whether the guest may write to the memory. `Auto` follows `readonly`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RomMode {
    On,
    Off,
    Auto,
}

/// A RAM backing as configured by the user, before validation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackingSpec {
    pub kind: BackingKind,
    /// `share=on`: MAP_SHARED, guest writes reach the fd and other processes see them.
    pub share: bool,
    /// `readonly=on`: open the file O_RDONLY (the template file must not change).
    pub readonly: bool,
    pub rom: RomMode,
    pub hugepages: bool,
}

impl Default for BackingSpec {
    fn default() -> Self {
        BackingSpec {
            kind: BackingKind::Anonymous,
            share: false,
            readonly: false,
            rom: RomMode::Auto,
            hugepages: false,
        }
    }
}

impl BackingSpec {
    pub fn anonymous() -> Self {
        Self::default()
    }

    pub fn memfd(share: bool) -> Self {
        BackingSpec {
            kind: BackingKind::Memfd,
            share,
            ..Self::default()
        }
    }

    pub fn file(path: impl Into<PathBuf>, share: bool) -> Self {
        BackingSpec {
            kind: BackingKind::File(path.into()),
            share,
            ..Self::default()
        }
    }

    /// The template-clone backing of the QEMU seed: `share=off,readonly=on,rom=off`.
    pub fn template_clone(path: impl Into<PathBuf>) -> Self {
        BackingSpec {
            kind: BackingKind::File(path.into()),
            share: false,
            readonly: true,
            rom: RomMode::Off,
            hugepages: false,
        }
    }

    /// Whether the guest would see this memory as read-only.
    pub fn is_rom(&self) -> bool {
        match self.rom {
            RomMode::On => true,
            RomMode::Off => false,
            RomMode::Auto => self.readonly,
        }
    }

    /// Checks the combination of options; `what` names the memory in errors
    /// (for example `--memory` or `virtio-mem 'mem0'`).
    pub fn validate(&self, what: &str) -> Result<RamBacking, BackingError> {
        let err = |reason: &str, fix: &str| BackingError::Invalid {
            what: what.to_string(),
            backing: self.to_string(),
            reason: reason.to_string(),
            fix: fix.to_string(),
        };
        if self.is_rom() {
            return Err(if self.rom == RomMode::On {
                err(
                    "rom=on would make guest RAM read-only, and a guest cannot run on RAM it cannot write",
                    "use rom=off (for a template clone: share=off,readonly=on,rom=off)",
                )
            } else {
                err(
                    "readonly=on with rom=auto makes guest RAM read-only, and a guest cannot run on RAM it cannot write",
                    "add rom=off to keep the file read-only while the guest writes private copies",
                )
            });
        }
        match &self.kind {
            BackingKind::Anonymous => {
                if self.share {
                    return Err(err(
                        "anonymous RAM has no fd, so share=on could not share it with any other process",
                        "use backing=memfd,share=on (or a file with share=on) for shared RAM",
                    ));
                }
                if self.readonly {
                    return Err(err(
                        "readonly= applies to file-backed RAM only",
                        "drop readonly=, or use backing=file,path=P",
                    ));
                }
            }
            BackingKind::Memfd => {
                if self.readonly {
                    return Err(err(
                        "readonly= applies to file-backed RAM only; a fresh memfd has no content to protect",
                        "drop readonly=, or use backing=file,path=P",
                    ));
                }
            }
            BackingKind::File(path) => {
                if path.as_os_str().is_empty() {
                    return Err(err("backing=file needs a path", "add path=FILE"));
                }
                if self.readonly && self.share {
                    return Err(err(
                        "readonly=on with share=on maps the file shared but read-only, so guest writes could go nowhere",
                        "use share=off,readonly=on,rom=off for a template clone, or share=on,readonly=off for a template",
                    ));
                }
            }
        }
        Ok(RamBacking { spec: self.clone() })
    }
}

impl fmt::Display for BackingSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let onoff = |b: bool| if b { "on" } else { "off" };
        match &self.kind {
            BackingKind::Anonymous => write!(f, "backing=anon")?,
            BackingKind::Memfd => write!(f, "backing=memfd")?,
            BackingKind::File(p) => write!(f, "backing=file,path={}", p.display())?,
        }
        write!(f, ",share={}", onoff(self.share))?;
        if matches!(self.kind, BackingKind::File(_)) {
            write!(f, ",readonly={}", onoff(self.readonly))?;
            let rom = match self.rom {
                RomMode::On => "on",
                RomMode::Off => "off",
                RomMode::Auto => "auto",
            };
            write!(f, ",rom={rom}")?;
        }
        if self.hugepages {
            write!(f, ",hugepages=on")?;
        }
        Ok(())
    }
}

/// A validated backing and what it allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamBacking {
    spec: BackingSpec,
}

impl RamBacking {
    pub fn spec(&self) -> &BackingSpec {
        &self.spec
    }

    /// Discarding a range makes it read back as zero and returns its host memory.
    /// False for private file mappings: the file's content shows through again.
    pub fn discard_reads_zero(&self) -> bool {
        !matches!(self.spec.kind, BackingKind::File(_)) || self.spec.share
    }

    /// RAM can be handed to another process (a vhost-user daemon) as an fd,
    /// and both see the same pages.
    pub fn shareable(&self) -> bool {
        self.spec.share && !matches!(self.spec.kind, BackingKind::Anonymous)
    }

    /// Private file-backed RAM: a template clone, or a file mapped share=off.
    pub fn is_private_file(&self) -> bool {
        matches!(self.spec.kind, BackingKind::File(_)) && !self.spec.share
    }

    /// Smallest range that can be discarded: the page size of the mapping.
    pub fn discard_granularity(&self) -> u64 {
        if self.spec.hugepages {
            super::guest_ram::huge_page_size()
        } else {
            super::PAGE_SIZE
        }
    }
}

impl fmt::Display for RamBacking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.spec.fmt(f)
    }
}

#[derive(Debug, Error)]
pub enum BackingError {
    #[error("{what} ({backing}): {reason}; {fix}")]
    Invalid {
        what: String,
        backing: String,
        reason: String,
        fix: String,
    },
}
