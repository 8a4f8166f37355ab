//! The RAM policy: each device declares what it needs from guest RAM, and
//! one check compares those needs with the backings before anything runs.
//!
//! The cases come from VM templating: a clone's RAM is a private mapping of
//! the template file, so it can neither discard pages (they would show the
//! file again) nor share them with another process.

use std::fmt;

use thiserror::Error;

use super::backing::RamBacking;
use super::guest_ram::RegionRole;

/// What a device needs from the RAM it touches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// Ranges of RAM must be discardable, reading back as zero afterwards,
    /// in pieces as small as `granularity` bytes.
    Discard { granularity: u64 },
    /// RAM must be reachable through an fd another process maps shared.
    Share,
    /// The device must hold no plugged memory when a template is created.
    NothingPluggedInTemplate,
}

/// Which guest RAM a requirement applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every region: the guest may hand the device any page.
    AllRam,
    /// Only the region with this role (virtio-mem's own).
    Region(RegionRole),
}

/// What the check is for; some needs only matter when saving a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Starting a VM (or a clone of a template).
    Run,
    /// Saving the running VM as a template.
    CreateTemplate,
}

/// One need of one device, with the words to explain a refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamRequirement {
    /// The device, as the user named it: `balloon`, `virtio-mem 'mem0'`.
    pub device: String,
    /// The option that creates the need: `free-page-reporting=on`.
    pub option: String,
    pub need: Need,
    pub scope: Scope,
    /// Why the device needs it: "reported free pages must be discarded and read back as zero".
    pub why: String,
    /// What the user can change instead.
    pub fix: String,
}

/// One cell of the matrix that said no.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub device: String,
    pub option: String,
    /// The memory and its backing, for example `--memory (backing=file,...)`.
    pub memory: String,
    pub reason: String,
    pub fix: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} cannot work on {}: {}; {}",
            self.device, self.option, self.memory, self.reason, self.fix
        )
    }
}

/// Every refusal the check found, so the user can fix them in one go.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub struct PolicyError {
    pub refusals: Vec<Refusal>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.refusals.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// The name users know a region by and the option that configures it, for messages.
pub fn region_name(role: &RegionRole) -> (String, String) {
    match role {
        RegionRole::Boot => ("guest RAM".into(), "--memory".into()),
        RegionRole::VirtioMem(id) => (
            format!("the memory of virtio-mem '{id}'"),
            format!("--virtio-mem id={id}"),
        ),
    }
}

/// Why `backing` cannot satisfy `need`, or `None` when it can.
pub fn shortfall(need: &Need, backing: &RamBacking, op: Operation) -> Option<String> {
    match need {
        Need::Discard { granularity } => {
            if !backing.discard_reads_zero() {
                let what = if backing.spec().readonly {
                    "a template clone's RAM is a private mapping of the template file"
                } else {
                    "share=off maps the file privately"
                };
                Some(format!(
                    "{what}, and discarded pages would read back the file's content instead of zeroes"
                ))
            } else if backing.discard_granularity() > *granularity {
                Some(format!(
                    "RAM on {} KiB huge pages cannot discard {} KiB pieces",
                    backing.discard_granularity() / 1024,
                    granularity / 1024
                ))
            } else {
                None
            }
        }
        Need::Share => {
            if backing.shareable() {
                None
            } else if backing.is_private_file() {
                Some("share=off keeps guest writes in this process's private copies, so another process mapping the file would read stale pages".into())
            } else if matches!(backing.spec().kind, super::BackingKind::Anonymous) {
                Some("anonymous RAM has no fd to hand to another process".into())
            } else {
                Some("share=off keeps guest writes private to this process, so another process would never see them".into())
            }
        }
        Need::NothingPluggedInTemplate => (op == Operation::CreateTemplate).then(|| {
            "plugged virtio-mem memory is not part of the template's RAM file, so clones would start with plugged blocks whose content is gone".into()
        }),
    }
}

/// Compares every requirement with every region it touches. `regions` are
/// the backings by role (no memory needs to be mapped: `--dry-run` checks too).
pub fn check(
    requirements: &[RamRequirement],
    regions: &[(RegionRole, RamBacking)],
    op: Operation,
) -> Result<(), PolicyError> {
    let mut refusals = Vec::new();
    for req in requirements {
        let mut seen: Vec<&RegionRole> = Vec::new();
        for (role, backing) in regions {
            let applies = match &req.scope {
                Scope::AllRam => true,
                Scope::Region(r) => r == role,
            };
            // A role split in several ranges has one backing: report it once.
            if !applies || seen.contains(&role) {
                continue;
            }
            seen.push(role);
            if let Some(reason) = shortfall(&req.need, backing, op) {
                refusals.push(Refusal {
                    device: req.device.clone(),
                    option: req.option.clone(),
                    memory: {
                        let (name, option) = region_name(role);
                        format!("{name} ({option} {backing})")
                    },
                    reason: format!("{}, but {reason}", req.why),
                    fix: req.fix.clone(),
                });
            }
        }
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(PolicyError { refusals })
    }
}
