//! The Generic Event Device: how a hardware-reduced ACPI platform tells the
//! guest about events (the power button, a new VM generation ID). The host sets event bits
//! and raises GSI `GED_GSI`; the guest's `_EVT` method reads the register,
//! which clears it, and notifies the devices whose bits were set.

use std::io;

use log::debug;
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// The power button was pressed: `_EVT` notifies `\_SB.PWRB` with 0x80.
pub const EVENT_POWER_BUTTON: u8 = 1 << 0;
/// The VM generation ID changed (a restore): `_EVT` notifies `\_SB.VGEN`
/// with 0x80, when the VM has that device.
pub const EVENT_GENERATION_ID: u8 = 1 << 1;
/// Every event the DSDT's `_EVT` method handles.
pub const EVENTS_ALL: u8 = EVENT_POWER_BUTTON | EVENT_GENERATION_ID;

pub struct Ged {
    pending: u8,
    irq: EventFd,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GedState {
    /// Events raised and not yet read by the guest.
    pub pending: u8,
}

impl GedState {
    /// Saved events must be ones the guest's `_EVT` knows.
    pub fn validate(&self) -> Result<(), String> {
        if self.pending & !EVENTS_ALL != 0 {
            return Err(format!(
                "pending events {:#x} include bits the platform does not define",
                self.pending
            ));
        }
        Ok(())
    }
}

impl Ged {
    pub fn new(irq: EventFd) -> Self {
        Ged { pending: 0, irq }
    }

    /// Raises `events` (EVENT_* bits) and interrupts the guest.
    pub fn raise(&mut self, events: u8) -> io::Result<()> {
        self.pending |= events;
        self.irq.write(1)
    }

    pub fn save(&self) -> GedState {
        GedState {
            pending: self.pending,
        }
    }

    /// Saved events the guest had not read are raised again.
    pub fn restore(&mut self, s: GedState) -> io::Result<()> {
        self.pending = 0;
        if s.pending != 0 {
            self.raise(s.pending)?;
        }
        Ok(())
    }
}

impl BusDevice for Ged {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = std::mem::take(&mut self.pending);
            debug!("GED: guest read events {:#x}", *b);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_interrupt_and_reading_clears_them() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ged = Ged::new(irq.try_clone().unwrap());
        let mut b = [0u8];
        ged.read(0, &mut b);
        assert_eq!(b, [0]);
        assert!(irq.read().is_err(), "no interrupt before an event");
        ged.raise(EVENT_POWER_BUTTON).unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(ged.save().pending, EVENT_POWER_BUTTON);
        ged.read(0, &mut b);
        assert_eq!(b, [EVENT_POWER_BUTTON]);
        ged.read(0, &mut b);
        assert_eq!(b, [0]);

        let mut restored = Ged::new(irq.try_clone().unwrap());
        restored
            .restore(GedState {
                pending: EVENT_POWER_BUTTON,
            })
            .unwrap();
        assert_eq!(irq.read().unwrap(), 1, "a pending event is raised again");
        restored.read(0, &mut b);
        assert_eq!(b, [EVENT_POWER_BUTTON]);
    }
}
