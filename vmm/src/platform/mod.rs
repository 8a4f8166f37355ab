//! The legacy platform devices a PC guest expects: COM1, and the ports
//! through which it powers off or resets.

pub mod ged;
pub mod power;
pub mod serial;
pub mod serial_watch;
pub mod terminal;
