//! The VM Generation ID (Microsoft's "Virtual Machine Generation ID"
//! specification, as QEMU's `vmgenid` device and Firecracker expose it): a
//! 16-byte GUID in guest RAM that changes whenever the VM may have been
//! duplicated or rolled back. A restored snapshot or a template clone gets
//! a new one, and the guest is told through an ACPI notification (the GED
//! raises `EVENT_GENERATION_ID`, `_EVT` notifies `\_SB.VGEN` with 0x80).
//! Linux's driver (drivers/virt/vmgenid.c) then reseeds its RNG
//! ("crng reseeded due to virtual machine fork"), so that clones of one
//! template do not draw the same random numbers.
//!
//! Byte order, as QEMU: the GUID is kept in RFC 4122 order (the order its
//! string shows, which `query-vm-generation-id` returns); guest RAM holds
//! it in Microsoft's GUID layout, where the first three fields (time_low,
//! time_mid, time_hi_and_version) are little-endian and the last eight
//! bytes are as in the string (QEMU's `qemu_uuid_bswap` before writing).
//! Windows reads it that way; Linux only compares the 16 bytes.

use std::fmt;

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout::VMGENID_ADDR;

/// A generation ID, bytes in RFC 4122 (string) order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// A random version 4 GUID (RFC 4122), from the kernel's CSPRNG.
    pub fn random() -> std::io::Result<Guid> {
        let mut b = [0u8; 16];
        let mut got = 0;
        while got < b.len() {
            // SAFETY: the pointer and length describe the unfilled rest of `b`.
            let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            got += n as usize;
        }
        Ok(Guid::v4_from(b))
    }

    /// `bytes` with the RFC 4122 version (4, random) and variant (10xx) bits set.
    pub fn v4_from(mut bytes: [u8; 16]) -> Guid {
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Guid(bytes)
    }

    /// The 16 bytes as guest RAM holds them (Microsoft's GUID layout).
    pub fn to_guest_bytes(self) -> [u8; 16] {
        swap_fields(self.0)
    }

    /// The GUID from the 16 bytes guest RAM holds.
    pub fn from_guest_bytes(b: [u8; 16]) -> Guid {
        Guid(swap_fields(b))
    }

    /// Writes it at `VMGENID_ADDR`.
    pub fn write_to<M: GuestMemory>(self, mem: &M) -> Result<(), GuestMemoryError> {
        mem.write_slice(&self.to_guest_bytes(), GuestAddress(VMGENID_ADDR))
    }

    /// The one at `VMGENID_ADDR`.
    pub fn read_from<M: GuestMemory>(mem: &M) -> Result<Guid, GuestMemoryError> {
        let mut b = [0u8; 16];
        mem.read_slice(&mut b, GuestAddress(VMGENID_ADDR))?;
        Ok(Guid::from_guest_bytes(b))
    }
}

/// QEMU's `qemu_uuid_bswap`: reverses the first three fields; its own inverse.
fn swap_fields(mut b: [u8; 16]) -> [u8; 16] {
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lower case, as QEMU's
/// `qemu_uuid_unparse`.
impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The generation ID device of a running VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmGenId {
    /// What the guest sees now.
    pub guid: Guid,
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;

    const RFC: [u8; 16] = [
        0x32, 0x4e, 0x6e, 0xaf, 0xd1, 0xd1, 0x4b, 0xf6, 0xbf, 0x41, 0xb9, 0xbb, 0x6c, 0x91, 0xfb,
        0x87,
    ];

    #[test]
    fn formats_as_qemu_and_stores_the_first_three_fields_little_endian() {
        let g = Guid(RFC);
        assert_eq!(g.to_string(), "324e6eaf-d1d1-4bf6-bf41-b9bb6c91fb87");
        // time_low, time_mid and time_hi_and_version byte-swapped (QEMU's
        // qemu_uuid_bswap), the last eight bytes as in the string.
        assert_eq!(
            g.to_guest_bytes(),
            [
                0xaf, 0x6e, 0x4e, 0x32, 0xd1, 0xd1, 0xf6, 0x4b, 0xbf, 0x41, 0xb9, 0xbb, 0x6c, 0x91,
                0xfb, 0x87
            ]
        );
        assert_eq!(Guid::from_guest_bytes(g.to_guest_bytes()), g);
    }

    #[test]
    fn random_guids_are_version_4_and_differ() {
        let a = Guid::random().unwrap();
        let b = Guid::random().unwrap();
        assert_ne!(a, b);
        for g in [a, b] {
            let s = g.to_string();
            assert_eq!(s.len(), 36);
            assert_eq!(&s[14..15], "4", "version 4: {s}");
            assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "variant: {s}");
        }
        assert_eq!(
            Guid::v4_from([0xff; 16]).to_string(),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        assert_eq!(
            Guid::v4_from([0; 16]).to_string(),
            "00000000-0000-4000-8000-000000000000"
        );
    }

    #[test]
    fn written_at_the_layout_address_and_read_back() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let g = Guid(RFC);
        g.write_to(&mem).unwrap();
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, GuestAddress(VMGENID_ADDR))
            .unwrap();
        assert_eq!(raw, g.to_guest_bytes());
        assert_eq!(Guid::read_from(&mem).unwrap(), g);
    }
}
