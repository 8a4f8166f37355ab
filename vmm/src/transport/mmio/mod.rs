//! The virtio-mmio (version 2) transport: the register window of virtio 1.2,
//! 4.2.2, in front of one device model.
//!
//! Guest accesses arrive through [`MmioTransport::read`] and
//! [`MmioTransport::write`] on vCPU threads. Queue notifications normally
//! bypass the transport: the VMM registers [`MmioTransport::queue_evts`] as
//! KVM ioeventfds at `window + NOTIFY_OFFSET`, and an event loop locks the
//! device and calls `queue_notify`. A write that reaches QueueNotify anyway
//! (no ioeventfd registered) is handled here.
//!
//! Nothing a guest writes may panic: every bad access is ignored and
//! logged through `guest_warn!`, which bounds how much a guest can make
//! the VMM log (see `devices::log_limit`).

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use devices::virtio::{
    ActivateError, Ring, VirtioCommon, VirtioDevice, VirtioInterrupt, STATUS_DRIVER,
    STATUS_DRIVER_OK,
};
use devices::{guest_warn, host_error};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::{MmioInterrupt, VIRTIO_MMIO_INT_ALL};
use crate::layout::VIRTIO_MMIO_SIZE;

#[cfg(test)]
mod tests;

/// "virt", little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// virtio-mmio version 2: the virtio 1.x register layout (version 1 is legacy).
pub const VERSION: u32 = 2;
/// QEMU's vendor id ("QEMU"), so that a guest sees the same virtio-mmio
/// identity here as under QEMU; no Linux driver matches on it.
pub const VENDOR_ID: u32 = 0x554D_4551;

pub const MAGIC_VALUE_OFFSET: u64 = 0x000;
pub const VERSION_OFFSET: u64 = 0x004;
pub const DEVICE_ID_OFFSET: u64 = 0x008;
pub const VENDOR_ID_OFFSET: u64 = 0x00c;
pub const DEVICE_FEATURES_OFFSET: u64 = 0x010;
pub const DEVICE_FEATURES_SEL_OFFSET: u64 = 0x014;
pub const DRIVER_FEATURES_OFFSET: u64 = 0x020;
pub const DRIVER_FEATURES_SEL_OFFSET: u64 = 0x024;
pub const QUEUE_SEL_OFFSET: u64 = 0x030;
pub const QUEUE_NUM_MAX_OFFSET: u64 = 0x034;
pub const QUEUE_NUM_OFFSET: u64 = 0x038;
pub const QUEUE_READY_OFFSET: u64 = 0x044;
/// QueueNotify: where the VMM puts each queue's ioeventfd (4 bytes, datamatch = queue index).
pub const NOTIFY_OFFSET: u64 = 0x050;
pub const INTERRUPT_STATUS_OFFSET: u64 = 0x060;
pub const INTERRUPT_ACK_OFFSET: u64 = 0x064;
pub const STATUS_OFFSET: u64 = 0x070;
pub const QUEUE_DESC_LOW_OFFSET: u64 = 0x080;
pub const QUEUE_DESC_HIGH_OFFSET: u64 = 0x084;
pub const QUEUE_DRIVER_LOW_OFFSET: u64 = 0x090;
pub const QUEUE_DRIVER_HIGH_OFFSET: u64 = 0x094;
pub const QUEUE_DEVICE_LOW_OFFSET: u64 = 0x0a0;
pub const QUEUE_DEVICE_HIGH_OFFSET: u64 = 0x0a4;
pub const SHM_SEL_OFFSET: u64 = 0x0ac;
pub const SHM_LEN_LOW_OFFSET: u64 = 0x0b0;
pub const SHM_LEN_HIGH_OFFSET: u64 = 0x0b4;
pub const SHM_BASE_LOW_OFFSET: u64 = 0x0b8;
pub const SHM_BASE_HIGH_OFFSET: u64 = 0x0bc;
pub const CONFIG_GENERATION_OFFSET: u64 = 0x0fc;
/// Start of the device-specific configuration space, which runs to the end of the window.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// The transport's own registers; the device's state is saved beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub shm_sel: u32,
    /// InterruptStatus: a cause the driver has not acknowledged yet must
    /// survive, or the guest would never see that completion.
    pub interrupt_status: u32,
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<MmioInterrupt>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    shm_sel: u32,
}

impl MmioTransport {
    /// Wraps `device`, creates one EventFd per queue (for the VMM to register
    /// as KVM ioeventfds at window base + [`NOTIFY_OFFSET`] with datamatch =
    /// queue index, 4 bytes), and installs into the device an interrupt that
    /// sets the InterruptStatus bit and writes `irq_evt` (the VMM registers it
    /// as a KVM irqfd).
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, irq_evt: EventFd) -> io::Result<Self> {
        let interrupt = Arc::new(MmioInterrupt::new(irq_evt));
        let queue_evts = {
            let mut dev = lock(&device);
            let n = dev.common().queues.len();
            let evts = (0..n)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<io::Result<Vec<_>>>()?;
            dev.common_mut().interrupt = Some(interrupt.clone() as Arc<dyn VirtioInterrupt>);
            evts
        };
        Ok(MmioTransport {
            device,
            interrupt,
            queue_evts,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            shm_sel: 0,
        })
    }

    pub fn save_state(&self) -> MmioTransportState {
        MmioTransportState {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            shm_sel: self.shm_sel,
            interrupt_status: self.interrupt.status(),
        }
    }

    /// Applies saved registers to a transport built around the restored
    /// device. A pending interrupt is raised again: if the guest had not
    /// taken it yet, it must not wait for a completion that already happened.
    pub fn restore_state(&mut self, s: &MmioTransportState) -> Result<(), String> {
        if s.interrupt_status & !VIRTIO_MMIO_INT_ALL != 0 {
            return Err(format!(
                "InterruptStatus {:#x} has bits virtio-mmio does not define",
                s.interrupt_status
            ));
        }
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.queue_sel = s.queue_sel;
        self.shm_sel = s.shm_sel;
        self.interrupt.clear();
        if s.interrupt_status != 0 {
            self.interrupt
                .raise(s.interrupt_status)
                .map_err(|e| format!("raising the pending interrupt again failed: {e}"))?;
        }
        Ok(())
    }

    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// One per queue, index = queue index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// A guest read of `data.len()` bytes at `offset` within the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.is_empty() {
            return;
        }
        if !in_window(offset, data.len()) {
            guest_warn!(
                "virtio-mmio: {}-byte read at {offset:#x} is outside the window; reads as zero",
                data.len()
            );
            return;
        }
        if offset >= CONFIG_SPACE_OFFSET {
            if !matches!(data.len(), 1 | 2 | 4 | 8) {
                guest_warn!(
                    "virtio-mmio: {}-byte config-space read at {offset:#x}; reads as zero",
                    data.len()
                );
                return;
            }
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            guest_warn!(
                "virtio-mmio: {}-byte register read at {offset:#x}; registers are aligned 32-bit, reads as zero",
                data.len()
            );
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write of `data` at `offset` within the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if !in_window(offset, data.len()) {
            guest_warn!(
                "virtio-mmio: {}-byte write at {offset:#x} is outside the window; ignored",
                data.len()
            );
            return;
        }
        if offset >= CONFIG_SPACE_OFFSET {
            if !matches!(data.len(), 1 | 2 | 4 | 8) {
                guest_warn!(
                    "virtio-mmio: {}-byte config-space write at {offset:#x}; ignored",
                    data.len()
                );
                return;
            }
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!(
                "virtio-mmio: {}-byte register write at {offset:#x}; registers are 32-bit, ignored",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            guest_warn!("virtio-mmio: unaligned register write at {offset:#x}; ignored");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            MAGIC_VALUE_OFFSET => MAGIC_VALUE,
            VERSION_OFFSET => VERSION,
            DEVICE_ID_OFFSET => lock(&self.device).device_type(),
            VENDOR_ID_OFFSET => VENDOR_ID,
            DEVICE_FEATURES_OFFSET => lock(&self.device)
                .common()
                .features_page(self.device_features_sel),
            QUEUE_NUM_MAX_OFFSET => self.with_queue(|q| q.map_or(0, |q| u32::from(q.max_size()))),
            QUEUE_READY_OFFSET => self.with_queue(|q| q.map_or(0, |q| u32::from(q.ready()))),
            INTERRUPT_STATUS_OFFSET => self.interrupt.status(),
            STATUS_OFFSET => u32::from(lock(&self.device).common().status),
            // No shared memory regions: a length of -1 says the selected one
            // does not exist; the base of a missing region reads the same.
            SHM_LEN_LOW_OFFSET | SHM_LEN_HIGH_OFFSET | SHM_BASE_LOW_OFFSET
            | SHM_BASE_HIGH_OFFSET => u32::MAX,
            CONFIG_GENERATION_OFFSET => lock(&self.device).common().config_generation,
            DEVICE_FEATURES_SEL_OFFSET
            | DRIVER_FEATURES_OFFSET
            | DRIVER_FEATURES_SEL_OFFSET
            | QUEUE_SEL_OFFSET
            | QUEUE_NUM_OFFSET
            | NOTIFY_OFFSET
            | INTERRUPT_ACK_OFFSET
            | QUEUE_DESC_LOW_OFFSET
            | QUEUE_DESC_HIGH_OFFSET
            | QUEUE_DRIVER_LOW_OFFSET
            | QUEUE_DRIVER_HIGH_OFFSET
            | QUEUE_DEVICE_LOW_OFFSET
            | QUEUE_DEVICE_HIGH_OFFSET
            | SHM_SEL_OFFSET => {
                guest_warn!("virtio-mmio: read of write-only register {offset:#x}; reads as zero");
                0
            }
            _ => {
                guest_warn!("virtio-mmio: read of unknown register {offset:#x}; reads as zero");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL_OFFSET => self.device_features_sel = value,
            DRIVER_FEATURES_OFFSET => {
                let mut dev = lock(&self.device);
                let c = dev.common_mut();
                // Features are negotiated after DRIVER (virtio 1.2, 3.1.1)
                // and before FEATURES_OK, which ack_features_page enforces.
                if c.status & STATUS_DRIVER == 0 {
                    guest_warn!(
                        "virtio-mmio: driver features written before the DRIVER status bit; ignored"
                    );
                    return;
                }
                c.ack_features_page(self.driver_features_sel, value);
            }
            DRIVER_FEATURES_SEL_OFFSET => self.driver_features_sel = value,
            QUEUE_SEL_OFFSET => self.queue_sel = value,
            QUEUE_NUM_OFFSET => match u16::try_from(value) {
                Ok(size) => self.configure_queue("QueueNum", |c, index| {
                    let q = &mut c.queues[index];
                    if q.try_set_size(size).is_err() {
                        guest_warn!(
                            "virtio-mmio: queue size {size} is not a power of two up to {}; ignored",
                            q.max_size()
                        );
                    }
                }),
                Err(_) => guest_warn!("virtio-mmio: queue size {value} is too large; ignored"),
            },
            QUEUE_READY_OFFSET => self.write_queue_ready(value),
            NOTIFY_OFFSET => self.notify(value),
            INTERRUPT_ACK_OFFSET => {
                if value & !VIRTIO_MMIO_INT_ALL != 0 {
                    guest_warn!("virtio-mmio: InterruptACK {value:#x} has undefined bits; they are ignored");
                }
                self.interrupt.ack(value & VIRTIO_MMIO_INT_ALL);
            }
            STATUS_OFFSET => self.write_status(value),
            QUEUE_DESC_LOW_OFFSET => self.write_ring("QueueDescLow", Ring::Descriptors, Some(value), None),
            QUEUE_DESC_HIGH_OFFSET => self.write_ring("QueueDescHigh", Ring::Descriptors, None, Some(value)),
            QUEUE_DRIVER_LOW_OFFSET => self.write_ring("QueueDriverLow", Ring::Driver, Some(value), None),
            QUEUE_DRIVER_HIGH_OFFSET => self.write_ring("QueueDriverHigh", Ring::Driver, None, Some(value)),
            QUEUE_DEVICE_LOW_OFFSET => self.write_ring("QueueDeviceLow", Ring::Device, Some(value), None),
            QUEUE_DEVICE_HIGH_OFFSET => self.write_ring("QueueDeviceHigh", Ring::Device, None, Some(value)),
            SHM_SEL_OFFSET => self.shm_sel = value,
            MAGIC_VALUE_OFFSET
            | VERSION_OFFSET
            | DEVICE_ID_OFFSET
            | VENDOR_ID_OFFSET
            | DEVICE_FEATURES_OFFSET
            | QUEUE_NUM_MAX_OFFSET
            | INTERRUPT_STATUS_OFFSET
            | SHM_LEN_LOW_OFFSET
            | SHM_LEN_HIGH_OFFSET
            | SHM_BASE_LOW_OFFSET
            | SHM_BASE_HIGH_OFFSET
            | CONFIG_GENERATION_OFFSET => {
                guest_warn!("virtio-mmio: write of {value:#x} to read-only register {offset:#x}; ignored")
            }
            _ => guest_warn!("virtio-mmio: write of {value:#x} to unknown register {offset:#x}; ignored"),
        }
    }

    /// Runs `f` on the selected queue, or on `None` when QueueSel names no queue.
    fn with_queue<T>(&self, f: impl FnOnce(Option<&Queue>) -> T) -> T {
        let dev = lock(&self.device);
        let q = usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| dev.common().queues.get(i));
        f(q)
    }

    /// Applies a queue-configuration write to the selected queue, unless the
    /// driver may no longer change it: the queue is enabled or the device is
    /// live (virtio 1.2, 4.2.3.2).
    fn configure_queue(&mut self, register: &str, f: impl FnOnce(&mut VirtioCommon, usize)) {
        let sel = self.queue_sel;
        let mut dev = lock(&self.device);
        let c = dev.common_mut();
        if c.status & STATUS_DRIVER_OK != 0 {
            guest_warn!("virtio-mmio: {register} written for queue {sel} after DRIVER_OK; ignored");
            return;
        }
        let Some(index) = usize::try_from(sel).ok().filter(|&i| i < c.queues.len()) else {
            guest_warn!("virtio-mmio: {register} written for nonexistent queue {sel}; ignored");
            return;
        };
        if c.queues[index].ready() {
            guest_warn!(
                "virtio-mmio: {register} written for queue {sel} while it is ready; ignored"
            );
            return;
        }
        f(c, index);
    }

    /// One half of a ring address. A register write cannot fail, so a
    /// misaligned address, like one never written, is refused when the
    /// driver sets DRIVER_OK: the device then asks for a reset (NEEDS_RESET).
    fn write_ring(&mut self, register: &str, ring: Ring, low: Option<u32>, high: Option<u32>) {
        self.configure_queue(register, |c, index| {
            c.write_ring_address(index, ring, low, high)
        });
    }

    fn write_queue_ready(&mut self, value: u32) {
        let sel = self.queue_sel;
        let mut dev = lock(&self.device);
        let c = dev.common_mut();
        if c.status & STATUS_DRIVER_OK != 0 {
            // Stopping or starting one queue of a live device is queue reset
            // (VIRTIO_F_RING_RESET), which no device here offers.
            guest_warn!("virtio-mmio: QueueReady written for queue {sel} after DRIVER_OK; ignored");
            return;
        }
        let Some(q) = usize::try_from(sel).ok().and_then(|i| c.queues.get_mut(i)) else {
            guest_warn!("virtio-mmio: QueueReady written for nonexistent queue {sel}; ignored");
            return;
        };
        match value {
            // Linux writes 0 when it gives a queue up, and reads it back.
            0 => q.set_ready(false),
            1 => q.set_ready(true),
            _ => guest_warn!(
                "virtio-mmio: QueueReady {value:#x} for queue {sel} is neither 0 nor 1; ignored"
            ),
        }
    }

    /// QueueNotify reached the transport: no ioeventfd caught it.
    fn notify(&mut self, value: u32) {
        let mut dev = lock(&self.device);
        let queues = dev.common().queues.len();
        match u16::try_from(value) {
            Ok(index) if usize::from(index) < queues => dev.queue_notify(index),
            _ => guest_warn!(
                "virtio-mmio: QueueNotify {value:#x} names no queue (the device has {queues}); ignored"
            ),
        }
    }

    fn write_status(&mut self, value: u32) {
        let Ok(status) = u8::try_from(value) else {
            guest_warn!("virtio-mmio: status {value:#x} has bits above the defined eight; ignored");
            return;
        };
        let mut dev = lock(&self.device);
        if status == 0 {
            dev.reset();
            // Cleared under the device lock, so no interrupt raised before
            // the reset can survive it.
            self.interrupt.clear();
            self.device_features_sel = 0;
            self.driver_features_sel = 0;
            self.queue_sel = 0;
            self.shm_sel = 0;
            return;
        }
        if dev.common_mut().set_status(status) {
            if let Err(e) = dev.activate() {
                let ty = dev.device_type();
                match e {
                    // The driver set the device up wrongly.
                    ActivateError::InvalidQueue { .. } | ActivateError::Legacy => guest_warn!(
                        "virtio-mmio: virtio device type {ty} refuses to start: {e}; the driver must reset it"
                    ),
                    _ => host_error!(
                        "virtio-mmio: activating virtio device type {ty} failed: {e}; the driver must reset it"
                    ),
                }
                dev.common_mut().set_needs_reset();
            }
        }
    }
}

/// Whether `len` bytes at `offset` lie inside the register window.
fn in_window(offset: u64, len: usize) -> bool {
    u64::try_from(len)
        .ok()
        .and_then(|len| offset.checked_add(len))
        .is_some_and(|end| end <= VIRTIO_MMIO_SIZE)
}

/// Locks a device. A poisoned lock means a device method panicked on another
/// thread; the guest still gets answers rather than a second panic here.
fn lock(device: &Mutex<dyn VirtioDevice>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}
