//! COM1: a 16550A UART (vm-superio) whose interrupt is a KVM irqfd. It
//! keeps the last bytes the guest wrote, for diagnostic dumps, and tells
//! the device thread when the guest has emptied its receive FIFO, so that
//! host input is read only as fast as the guest takes it.

use std::collections::VecDeque;
use std::io::{self, Write};

use devices::host_warn;
use log::warn;
use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialEvents;
use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Raises the UART's interrupt through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where guest output goes. The UART flushes it after every byte, so a
/// console or a log read by another process sees it at once.
pub type SerialOut = Box<dyn Write + Send>;

/// The UART's registers and receive FIFO (vm-superio's state, serializable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

/// The 16550A's receive FIFO depth in vm-superio.
const FIFO_SIZE: usize = 64;

/// How many of the guest's last output bytes a dump shows.
pub const OUTPUT_TAIL: usize = 512;

/// Modem control register: loopback mode (the UART receives no input then).
const MCR_LOOP: u8 = 0x10;

/// Writes an eventfd whenever the guest reads the receive FIFO empty.
pub struct InputDrained(pub EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // A full counter still leaves the eventfd readable.
        let _ = self.0.write(1);
    }
}

/// The guest's output on its way to the host, with the last
/// [`OUTPUT_TAIL`] bytes kept.
pub struct TailedOut {
    out: SerialOut,
    tail: VecDeque<u8>,
    total: u64,
}

impl TailedOut {
    fn new(out: SerialOut) -> Self {
        TailedOut {
            out,
            tail: VecDeque::with_capacity(OUTPUT_TAIL),
            total: 0,
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.tail.len() == OUTPUT_TAIL {
                self.tail.pop_front();
            }
            self.tail.push_back(b);
        }
        self.total += bytes.len() as u64;
    }
}

impl Write for TailedOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.out.write(buf) {
            Ok(n) => {
                self.keep(&buf[..n]);
                Ok(n)
            }
            // Written again by the caller.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                // The host lost it, but the guest did write it.
                self.keep(buf);
                Err(e)
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The guest's last output bytes, and how many it wrote in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputTail {
    pub bytes: Vec<u8>,
    pub total: u64,
}

pub struct SerialDevice {
    uart: Serial<IrqTrigger, InputDrained, TailedOut>,
}

impl SerialDevice {
    /// `input_drained` is written each time the guest reads the receive
    /// FIFO empty: the device thread then reads more host input.
    pub fn new(irq: EventFd, input_drained: EventFd, out: SerialOut) -> Self {
        SerialDevice {
            uart: Serial::with_events(
                IrqTrigger(irq),
                InputDrained(input_drained),
                TailedOut::new(out),
            ),
        }
    }

    /// A UART with saved registers; output goes to `out` (which may differ
    /// from where the saved VM wrote).
    pub fn restore(
        irq: EventFd,
        input_drained: EventFd,
        out: SerialOut,
        s: &ComState,
    ) -> Result<Self, String> {
        if s.in_buffer.len() > FIFO_SIZE {
            return Err(format!(
                "COM1: {} bytes in a receive FIFO of {FIFO_SIZE}",
                s.in_buffer.len()
            ));
        }
        let state = SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        let uart = Serial::from_state(
            &state,
            IrqTrigger(irq),
            InputDrained(input_drained),
            TailedOut::new(out),
        )
        .map_err(|e| format!("COM1: saved state refused: {e:?}"))?;
        Ok(SerialDevice { uart })
    }

    pub fn save(&self) -> ComState {
        let s = self.uart.state();
        ComState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// How many input bytes the receive FIFO takes now: none while the
    /// UART is in loopback mode, where it receives nothing.
    pub fn input_room(&self) -> usize {
        if self.uart.state().modem_control & MCR_LOOP != 0 {
            return 0;
        }
        self.uart.fifo_capacity()
    }

    /// Host input (stdin) for the guest; returns how many bytes the FIFO
    /// took (at most [`SerialDevice::input_room`]).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                warn!("COM1: input dropped: {e}");
                0
            }
        }
    }

    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }

    /// The last [`OUTPUT_TAIL`] bytes the guest wrote (since this process
    /// made the UART), for a dump.
    pub fn output_tail(&self) -> OutputTail {
        let w = self.uart.writer();
        OutputTail {
            bytes: w.tail.iter().copied().collect(),
            total: w.total,
        }
    }
}

/// `bytes` as one line of text: printable ASCII as it is, `\n`, `\r`,
/// `\t`, `\\` and `\"` escaped, anything else as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset > 7 {
            data.fill(0xff);
            return;
        }
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset > 7 {
            return;
        }
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            // Output the host cannot take (a closed pipe) must not stop the guest.
            host_warn!("COM1: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn evt() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_output_reaches_the_writer_and_input_raises_the_irq() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let mut com1 = SerialDevice::new(irq.try_clone().unwrap(), evt(), Box::new(sink.clone()));
        // IER: receive-data interrupt on.
        com1.write(1, &[0x01]);
        for b in b"hi\n" {
            com1.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        assert_eq!(com1.enqueue_input(b"x"), 1);
        assert!(irq.read().unwrap() >= 1);
        let mut d = [0u8];
        com1.read(0, &mut d);
        assert_eq!(d, [b'x']);
        // Wrong widths and offsets are ignored, not fatal.
        let mut w = [0u8; 2];
        com1.read(0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        com1.write(9, &[1]);
    }

    #[test]
    fn input_takes_only_the_fifo_room_and_a_drained_fifo_is_announced() {
        let drained = evt();
        let mut com1 = SerialDevice::new(evt(), drained.try_clone().unwrap(), Box::new(io::sink()));
        assert_eq!(com1.input_room(), FIFO_SIZE);
        let input: Vec<u8> = (0..100u8).collect();
        assert_eq!(com1.enqueue_input(&input), FIFO_SIZE);
        assert_eq!(com1.input_room(), 0);
        assert!(drained.read().is_err(), "not drained yet");
        let mut d = [0u8];
        for want in 0..FIFO_SIZE as u8 {
            com1.read(0, &mut d);
            assert_eq!(d[0], want);
        }
        assert_eq!(drained.read().unwrap(), 1, "the last read empties the FIFO");
        assert_eq!(com1.input_room(), FIFO_SIZE);
        // Loopback mode (MCR bit 4) receives nothing.
        com1.write(4, &[0x10]);
        assert_eq!(com1.input_room(), 0);
        com1.write(4, &[0x08]);
        assert_eq!(com1.input_room(), FIFO_SIZE);
    }

    #[test]
    fn the_last_output_bytes_are_kept_for_a_dump() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let mut com1 = SerialDevice::new(irq, evt(), Box::new(sink.clone()));
        assert_eq!(com1.output_tail(), OutputTail::default());
        let sent: Vec<u8> = (0..OUTPUT_TAIL + 100).map(|i| (i % 251) as u8).collect();
        for b in &sent {
            com1.write(0, &[*b]);
        }
        let tail = com1.output_tail();
        assert_eq!(tail.total, sent.len() as u64);
        assert_eq!(tail.bytes, sent[100..]);
        assert_eq!(*sink.0.lock().unwrap(), sent);
    }

    #[test]
    fn output_the_host_cannot_take_is_still_in_the_tail() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut com1 = SerialDevice::new(irq, evt(), Box::new(Closed));
        com1.write(0, b"x");
        assert_eq!(com1.output_tail().bytes, b"x");
    }

    #[test]
    fn escaped_bytes_are_one_printable_line() {
        assert_eq!(
            escape_bytes(b"ok \"q\" a\\b\r\n\t\x00\x1b[0m\xff"),
            r#"ok \"q\" a\\b\r\n\t\x00\x1b[0m\xff"#
        );
    }
}
