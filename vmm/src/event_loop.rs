//! The device thread: one epoll loop that runs queue work when the guest
//! kicks an ioeventfd, moves packets when a TAP has some, and feeds host
//! input to COM1.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::virtio::net::Net;
use devices::virtio::VirtioDevice;
use log::{debug, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;
use crate::exit::{ExitSignal, VmExit};
use crate::platform::serial::SerialDevice;

enum Source {
    /// The guest notified `queue` of `device` (named for logs).
    Queue {
        name: String,
        device: Arc<Mutex<dyn VirtioDevice>>,
        queue: u16,
        evt: EventFd,
    },
    /// Packets may be waiting on a TAP.
    Tap { name: String, net: Arc<Mutex<Net>> },
    /// Host input for COM1.
    Stdin { serial: Arc<Mutex<SerialDevice>> },
    /// The VM is ending: leave the loop.
    Stop(EventFd),
}

pub struct EventLoop {
    epoll: Epoll,
    sources: Vec<Source>,
}

impl EventLoop {
    pub fn new() -> io::Result<Self> {
        Ok(EventLoop {
            epoll: Epoll::new()?,
            sources: Vec::new(),
        })
    }

    fn add(&mut self, fd: RawFd, events: EventSet, source: Source) -> io::Result<()> {
        let token = self.sources.len() as u64;
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))?;
        self.sources.push(source);
        Ok(())
    }

    pub fn add_queue(
        &mut self,
        name: &str,
        device: Arc<Mutex<dyn VirtioDevice>>,
        queue: u16,
        evt: EventFd,
    ) -> io::Result<()> {
        let fd = evt.as_raw_fd();
        self.add(
            fd,
            EventSet::IN,
            Source::Queue {
                name: name.to_string(),
                device,
                queue,
                evt,
            },
        )
    }

    /// Edge-triggered: `Net::process_rx` reads the TAP until it is empty or
    /// the guest has no buffers; the guest's next RX kick resumes it.
    pub fn add_tap(&mut self, name: &str, net: Arc<Mutex<Net>>) -> io::Result<()> {
        let fd = lock(&net, name).tap_fd();
        self.add(
            fd,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
            Source::Tap {
                name: name.to_string(),
                net,
            },
        )
    }

    /// Stdin that epoll cannot watch (a regular file, /dev/null) gives no input.
    pub fn add_stdin(&mut self, serial: Arc<Mutex<SerialDevice>>) {
        if let Err(e) = self.add(libc::STDIN_FILENO, EventSet::IN, Source::Stdin { serial }) {
            debug!("stdin is not pollable ({e}); COM1 gets no input");
        }
    }

    /// Runs until `exit` is signalled (its eventfd `stop` becomes readable).
    pub fn run(mut self, exit: Arc<ExitSignal>, stop: EventFd) {
        if let Err(e) = self.add(stop.as_raw_fd(), EventSet::IN, Source::Stop(stop)) {
            exit.signal(VmExit::Failed(format!(
                "the device thread cannot watch its stop event: {e}"
            )));
            return;
        }
        let mut events = vec![EpollEvent::default(); 64];
        while !exit.is_set() {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Without this loop no queue would ever be served again.
                    exit.signal(VmExit::Failed(format!(
                        "the device thread's epoll_wait failed: {e}"
                    )));
                    return;
                }
            };
            for ev in &events[..n] {
                let token = ev.data() as usize;
                if !self.dispatch(token) {
                    return;
                }
            }
        }
    }

    /// Stops watching stdin: at its end it would stay readable forever.
    fn forget_stdin(&self) {
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            libc::STDIN_FILENO,
            EpollEvent::default(),
        );
    }

    /// Handles one ready source; false ends the loop.
    fn dispatch(&mut self, token: usize) -> bool {
        let Some(source) = self.sources.get(token) else {
            return true;
        };
        match source {
            Source::Queue {
                name,
                device,
                queue,
                evt,
            } => {
                if evt.read().is_ok() {
                    lock(device, name).queue_notify(*queue);
                }
            }
            Source::Tap { name, net } => lock(net, name).process_rx(),
            Source::Stdin { serial } => {
                let mut buf = [0u8; 64];
                match io::stdin().lock().read(&mut buf) {
                    Ok(0) => {
                        debug!("stdin closed; COM1 gets no more input");
                        self.forget_stdin();
                    }
                    Ok(n) => {
                        let taken = lock(serial, "COM1").enqueue_input(&buf[..n]);
                        if taken < n {
                            warn!("COM1: receive FIFO full; {} input bytes dropped", n - taken);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        warn!("reading stdin failed: {e}; COM1 gets no more input");
                        self.forget_stdin();
                    }
                }
            }
            Source::Stop(evt) => {
                let _ = evt.read();
                return false;
            }
        }
        true
    }
}
