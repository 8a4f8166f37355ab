//! ACPI tables describing the platform to the guest.
