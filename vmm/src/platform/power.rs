//! Power-off and reset: the FADT's hardware-reduced sleep control, sleep
//! status and reset registers, and the i8042 reset line Linux falls back on.

use std::sync::Arc;

use log::{debug, info};

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};
use crate::layout::{ACPI_RESET_VALUE, S5_SLP_TYP, SLP_EN};

/// Ports ACPI_SLEEP_CONTROL_PORT.. (control, status, reset), one byte each.
pub struct AcpiPower {
    exit: Arc<ExitSignal>,
}

impl AcpiPower {
    pub const LEN: u64 = 3;

    pub fn new(exit: Arc<ExitSignal>) -> Self {
        AcpiPower { exit }
    }
}

const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7 << SLP_TYP_SHIFT;

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never "woken", nothing pending.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [v] = data else {
            return;
        };
        match offset {
            0 if v & SLP_EN != 0 && (v & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLP_TYP => {
                info!("guest powered off (ACPI S5)");
                self.exit.signal(VmExit::PowerOff);
            }
            0 => debug!("ACPI sleep control {v:#x} ignored: only S5 is offered"),
            2 if *v == ACPI_RESET_VALUE => {
                info!("guest reset (ACPI reset register)");
                self.exit.signal(VmExit::Reboot);
            }
            _ => {}
        }
    }
}

/// The i8042 controller's command port (0x64): only the reset pulse
/// command matters; reads report an empty, ready controller.
pub struct I8042Reset {
    exit: Arc<ExitSignal>,
}

const I8042_CMD_RESET: u8 = 0xfe;

impl I8042Reset {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042Reset { exit }
    }
}

impl BusDevice for I8042Reset {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data == [I8042_CMD_RESET] {
            info!("guest reset (i8042 reset line)");
            self.exit.signal(VmExit::Reboot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_s5_with_slp_en_powers_off() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPower::new(exit.clone());
        pm.write(0, &[S5_SLP_TYP << 2]); // no SLP_EN
        pm.write(0, &[(3 << 2) | SLP_EN]); // S3
        pm.write(0, &[0, 0]);
        pm.write(2, &[ACPI_RESET_VALUE + 1]);
        assert!(!exit.is_set());
        pm.write(0, &[(S5_SLP_TYP << 2) | SLP_EN]);
        assert_eq!(exit.wait(), VmExit::PowerOff);
    }

    #[test]
    fn reset_register_and_i8042_reboot() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        AcpiPower::new(exit.clone()).write(2, &[ACPI_RESET_VALUE]);
        assert_eq!(exit.wait(), VmExit::Reboot);
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut kbd = I8042Reset::new(exit.clone());
        kbd.write(0, &[0xd1]);
        assert!(!exit.is_set());
        kbd.write(0, &[I8042_CMD_RESET]);
        assert_eq!(exit.wait(), VmExit::Reboot);
    }
}
