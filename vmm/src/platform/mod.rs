//! The platform devices a PC guest expects: COM1, the ports through which
//! it powers off or resets, the Generic Event Device, and the VM
//! Generation ID.

pub mod ged;
pub mod power;
pub mod serial;
pub mod serial_watch;
pub mod terminal;
pub mod vmgenid;
