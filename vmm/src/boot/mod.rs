//! Everything the guest finds in memory at boot: the kernel, its boot
//! parameters and the ACPI tables that describe the platform.

pub mod acpi;
pub mod loader;
