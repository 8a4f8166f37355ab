//! Port I/O and MMIO dispatch: guest accesses that leave KVM reach the
//! device whose range holds the address.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use log::{debug, warn};
use thiserror::Error;

/// A device on a bus. `offset` is relative to the start of its range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, Error)]
pub enum BusError {
    #[error("{what} at {base:#x} (length {len:#x}) overlaps a device already at {other:#x}")]
    Overlap {
        what: String,
        base: u64,
        len: u64,
        other: u64,
    },
    #[error("{what} has an empty or wrapping range at {base:#x} (length {len:#x})")]
    BadRange { what: String, base: u64, len: u64 },
}

struct Entry {
    len: u64,
    name: String,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// One address space (port I/O or MMIO).
pub struct Bus {
    kind: &'static str,
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new(kind: &'static str) -> Self {
        Bus {
            kind,
            devices: BTreeMap::new(),
        }
    }

    pub fn insert(
        &mut self,
        name: &str,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::BadRange {
                what: name.to_string(),
                base,
                len,
            });
        }
        let end = base + len;
        if let Some((&other, e)) = self.devices.range(..end).next_back() {
            if other + e.len > base {
                return Err(BusError::Overlap {
                    what: name.to_string(),
                    base,
                    len,
                    other,
                });
            }
        }
        self.devices.insert(
            base,
            Entry {
                len,
                name: name.to_string(),
                device,
            },
        );
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let (&base, e) = self.devices.range(..=addr).next_back()?;
        let off = addr - base;
        // An access straddling the end of a range goes nowhere rather than
        // letting a device see offsets it never claimed.
        (off.checked_add(size as u64)? <= e.len).then_some((off, e))
    }

    /// A guest read. Returns false when no device claims the address; the
    /// data then reads as all ones, as on a floating bus.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, e)) => {
                lock(&e.device, &e.name).read(off, data);
                true
            }
            None => {
                debug!(
                    "{}: read of {} bytes at {addr:#x}: no device",
                    self.kind,
                    data.len()
                );
                data.fill(0xff);
                false
            }
        }
    }

    /// A guest write. Returns false when no device claims the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, e)) => {
                lock(&e.device, &e.name).write(off, data);
                true
            }
            None => {
                debug!(
                    "{}: write of {:x?} at {addr:#x}: no device",
                    self.kind, data
                );
                false
            }
        }
    }
}

/// A device whose lock was poisoned by a panic keeps serving: the guest
/// should not hang because one access went wrong.
pub fn lock<'a, T: ?Sized>(m: &'a Mutex<T>, name: &str) -> std::sync::MutexGuard<'a, T> {
    m.lock().unwrap_or_else(|p| {
        warn!("{name}: lock poisoned by an earlier panic; continuing");
        p.into_inner()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_refuses_overlaps() {
        let mut bus = Bus::new("pio");
        let a = Arc::new(Mutex::new(Reg(vec![])));
        bus.insert("a", a.clone(), 0x3f8, 8).unwrap();
        assert!(bus.insert("b", a.clone(), 0x3fc, 8).is_err());
        assert!(bus.insert("c", a.clone(), 0x3f0, 9).is_err());
        assert!(bus.insert("d", a.clone(), 0x3f0, 8).is_ok());
        assert!(bus.insert("e", a.clone(), u64::MAX, 2).is_err());

        let mut d = [0u8; 1];
        assert!(bus.read(0x3fa, &mut d));
        assert_eq!(d, [2]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(a.lock().unwrap().0.last().unwrap(), &(7, vec![7]));
        // Straddling the end, or beyond any device: floating bus.
        let mut w = [0u8; 2];
        assert!(!bus.read(0x3ff, &mut w));
        assert_eq!(w, [0xff, 0xff]);
        assert!(!bus.write(0x400, &[1]));
    }
}
