//! The device thread: one epoll loop that runs queue work when the guest
//! kicks an ioeventfd, moves packets when a TAP has some, and feeds host
//! input to COM1. The VM object pauses it between two pieces of work, so a
//! paused VM has no request half done and writes nothing into guest RAM.
//!
//! Host input is read only as fast as the guest takes it: never more than
//! COM1's receive FIFO has room for, and once the FIFO is full stdin is
//! left out of the epoll set until the guest has read the FIFO empty.
//! Input waits in the pipe or the terminal meanwhile; none is dropped.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::log_limit;
use devices::vhost_user::VhostUserDevice;
use devices::virtio::net::Net;
use devices::virtio::VirtioDevice;
use log::{debug, warn};
use virtio_queue::QueueT;
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
    /// A TAP read failed earlier and its retry timer expired.
    TapRetry { name: String, net: Arc<Mutex<Net>> },
    /// A vhost-user back end used buffers of `queue` and signalled.
    Call {
        name: String,
        device: Arc<Mutex<VhostUserDevice>>,
        queue: u16,
        evt: EventFd,
    },
    /// Host input for COM1 (the state is in `EventLoop::stdin`).
    Stdin,
    /// The guest read COM1's receive FIFO empty: room for more input.
    InputDrained(EventFd),
    /// The VM is ending: leave the loop.
    Stop(EventFd),
    /// A request from the VM object waits in `control`.
    Control(EventFd),
}

/// What the VM object asks of the device thread.
enum LoopRequest {
    /// Finish the current piece of work, then park until `Resume`.
    Pause(Sender<()>),
    Resume(Sender<()>),
}

/// The VM object's side of the device thread: pause and resume it.
pub struct LoopHandle {
    requests: Sender<LoopRequest>,
    wake: EventFd,
}

/// How long a pause or resume may take before it is reported as stuck: the
/// device thread finishes at most one request or packet batch first.
const LOOP_ACK_TIMEOUT: Duration = Duration::from_secs(10);

impl LoopHandle {
    fn ask(&self, make: impl FnOnce(Sender<()>) -> LoopRequest, what: &str) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.requests
            .send(make(tx))
            .map_err(|_| io::Error::other(format!("the device thread has ended; cannot {what}")))?;
        self.wake.write(1)?;
        match rx.recv_timeout(LOOP_ACK_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(RecvTimeoutError::Timeout) => Err(io::Error::other(format!(
                "the device thread did not {what} within {} s (a device is stuck in I/O)",
                LOOP_ACK_TIMEOUT.as_secs()
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(io::Error::other(format!(
                "the device thread ended before it could {what}"
            ))),
        }
    }

    /// Returns once the device thread is parked between two pieces of work.
    pub fn pause(&self) -> io::Result<()> {
        self.ask(LoopRequest::Pause, "pause")
    }

    /// Returns once the device thread serves devices again.
    pub fn resume(&self) -> io::Result<()> {
        self.ask(LoopRequest::Resume, "resume")
    }
}

/// Stdin feeding COM1.
struct StdinInput {
    serial: Arc<Mutex<SerialDevice>>,
    /// Its epoll token (the index of [`Source::Stdin`]).
    token: u64,
    /// In the epoll set: false while the FIFO is full.
    watched: bool,
    /// At its end, or unreadable: never watched again.
    closed: bool,
    /// Read but not taken: the guest turned loopback mode on between the
    /// room check and the enqueue. Goes first once the FIFO drains.
    pending: Vec<u8>,
}

pub struct EventLoop {
    epoll: Epoll,
    sources: Vec<Source>,
    stdin: Option<StdinInput>,
    control: Option<Receiver<LoopRequest>>,
    /// Devices whose queues are processed once when the loop starts: after
    /// a restore, notifications the guest made before the save are gone
    /// with the old eventfds, and the chains they announced still wait.
    kick_at_start: Vec<(String, Arc<Mutex<dyn VirtioDevice>>)>,
}

impl EventLoop {
    pub fn new() -> io::Result<Self> {
        Ok(EventLoop {
            epoll: Epoll::new()?,
            sources: Vec::new(),
            stdin: None,
            control: None,
            kick_at_start: Vec::new(),
        })
    }

    /// The handle that pauses and resumes this loop once it runs.
    pub fn handle(&mut self) -> io::Result<LoopHandle> {
        let (tx, rx) = mpsc::channel();
        let wake = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        self.add(
            wake.as_raw_fd(),
            EventSet::IN,
            Source::Control(wake.try_clone()?),
        )?;
        self.control = Some(rx);
        Ok(LoopHandle { requests: tx, wake })
    }

    /// Processes every queue of `device` once when the loop starts.
    pub fn kick_at_start(&mut self, name: &str, device: Arc<Mutex<dyn VirtioDevice>>) {
        self.kick_at_start.push((name.to_string(), device));
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

    /// A vhost-user back end's call eventfd for `queue`: the interrupt is
    /// raised here, with InterruptStatus set, rather than by KVM's irqfd.
    pub fn add_call(
        &mut self,
        name: &str,
        device: Arc<Mutex<VhostUserDevice>>,
        queue: u16,
        evt: EventFd,
    ) -> io::Result<()> {
        let fd = evt.as_raw_fd();
        self.add(
            fd,
            EventSet::IN,
            Source::Call {
                name: name.to_string(),
                device,
                queue,
                evt,
            },
        )
    }

    /// Edge-triggered: `Net::process_rx` reads the TAP until it is empty or
    /// the guest has no buffers; the guest's next RX kick resumes it.
    /// After a TAP read error, the device's retry timer brings the next
    /// read instead (`Net::rx_retry_fd`).
    pub fn add_tap(&mut self, name: &str, net: Arc<Mutex<Net>>) -> io::Result<()> {
        let (fd, retry_fd) = {
            let n = lock(&net, name);
            (n.tap_fd(), n.rx_retry_fd())
        };
        self.add(
            fd,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
            Source::Tap {
                name: name.to_string(),
                net: net.clone(),
            },
        )?;
        self.add(
            retry_fd,
            EventSet::IN,
            Source::TapRetry {
                name: name.to_string(),
                net,
            },
        )
    }

    /// Stdin as COM1's input; `drained` is the eventfd COM1 writes when
    /// the guest has read its receive FIFO empty. Stdin that epoll cannot
    /// watch (a regular file, /dev/null) gives no input.
    pub fn add_stdin(
        &mut self,
        serial: Arc<Mutex<SerialDevice>>,
        drained: EventFd,
    ) -> io::Result<()> {
        let token = self.sources.len() as u64;
        if let Err(e) = self.add(libc::STDIN_FILENO, EventSet::IN, Source::Stdin) {
            debug!("stdin is not pollable ({e}); COM1 gets no input");
            return Ok(());
        }
        self.add(
            drained.as_raw_fd(),
            EventSet::IN,
            Source::InputDrained(drained),
        )?;
        self.stdin = Some(StdinInput {
            serial,
            token,
            watched: true,
            closed: false,
            pending: Vec::new(),
        });
        Ok(())
    }

    /// Runs until `exit` is signalled (its eventfd `stop` becomes readable).
    /// With `start_paused` it first waits for a resume, touching nothing.
    pub fn run(mut self, exit: Arc<ExitSignal>, stop: EventFd, start_paused: bool) {
        if let Err(e) = self.add(stop.as_raw_fd(), EventSet::IN, Source::Stop(stop)) {
            exit.signal(VmExit::Failed(format!(
                "the device thread cannot watch its stop event: {e}"
            )));
            return;
        }
        if start_paused && !self.park() {
            return;
        }
        for (name, device) in std::mem::take(&mut self.kick_at_start) {
            let mut dev = lock(&device, &name);
            if dev.common().activated {
                let ready: Vec<u16> = (0..dev.common().queues.len())
                    .filter(|&q| dev.common().queues[q].ready())
                    .map(|q| q as u16)
                    .collect();
                for q in ready {
                    dev.queue_notify(q);
                }
            }
        }
        self.after_resume();
        let mut events = vec![EpollEvent::default(); 64];
        // The device thread wakes at least this often to write the counts
        // of guest-caused log lines left out (devices::log_limit).
        let interval = log_limit::INTERVAL;
        let timeout_ms = i32::try_from(interval.as_millis()).unwrap_or(i32::MAX);
        let mut last_report = Instant::now();
        while !exit.is_set() {
            if last_report.elapsed() >= interval {
                log_limit::report_due();
                last_report = Instant::now();
            }
            let n = match self.epoll.wait(timeout_ms, &mut events) {
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

    /// Takes stdin out of the epoll set (while the FIFO is full, and for
    /// good at its end, where it would stay readable forever).
    fn unwatch_stdin(&mut self) {
        let Some(st) = self.stdin.as_mut() else {
            return;
        };
        if st.watched {
            st.watched = false;
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                libc::STDIN_FILENO,
                EpollEvent::default(),
            );
        }
    }

    /// Reads as much stdin as COM1's receive FIFO has room for.
    fn read_stdin(&mut self) {
        let Some(st) = self.stdin.as_mut() else {
            return;
        };
        let room = lock(&st.serial, "COM1").input_room();
        if room == 0 || !st.pending.is_empty() {
            self.unwatch_stdin();
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        // Straight from the fd: std's stdin buffers what it reads ahead,
        // where epoll no longer sees it.
        // SAFETY: reads at most `want` bytes into `buf`, which holds 64.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), want) };
        match n {
            0 => {
                debug!("stdin closed; COM1 gets no more input");
                st.closed = true;
                self.unwatch_stdin();
            }
            n if n > 0 => {
                let n = n as usize;
                let mut com1 = lock(&st.serial, "COM1");
                let taken = com1.enqueue_input(&buf[..n]);
                st.pending.extend_from_slice(&buf[taken..n]);
                let full = com1.input_room() == 0 || !st.pending.is_empty();
                drop(com1);
                if full {
                    self.unwatch_stdin();
                }
            }
            _ => {
                let e = io::Error::last_os_error();
                if !matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) {
                    warn!("reading stdin failed: {e}; COM1 gets no more input");
                    st.closed = true;
                    self.unwatch_stdin();
                }
            }
        }
    }

    /// The guest read the FIFO empty: what was left over goes first, then
    /// stdin is watched again.
    fn input_drained(&mut self) {
        let Some(st) = self.stdin.as_mut() else {
            return;
        };
        if !st.pending.is_empty() {
            let taken = lock(&st.serial, "COM1").enqueue_input(&st.pending);
            st.pending.drain(..taken);
        }
        if st.watched || st.closed || !st.pending.is_empty() {
            return;
        }
        let token = st.token;
        match self.epoll.ctl(
            ControlOperation::Add,
            libc::STDIN_FILENO,
            EpollEvent::new(EventSet::IN, token),
        ) {
            Ok(()) => st.watched = true,
            Err(e) => {
                warn!("watching stdin again failed: {e}; COM1 gets no more input");
                st.closed = true;
            }
        }
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
            Source::TapRetry { name, net } => lock(net, name).rx_retry_due(),
            Source::Call {
                name,
                device,
                queue,
                evt,
            } => {
                if evt.read().is_ok() {
                    lock(device, name).backend_called(*queue);
                }
            }
            Source::Stdin => self.read_stdin(),
            Source::InputDrained(evt) => {
                let _ = evt.read();
                self.input_drained();
            }
            Source::Stop(evt) => {
                let _ = evt.read();
                return false;
            }
            Source::Control(evt) => {
                let _ = evt.read();
                return self.serve_control();
            }
        }
        true
    }

    /// Answers the VM object's requests; a pause blocks here, so that no
    /// other source is served until the resume. False ends the loop.
    fn serve_control(&mut self) -> bool {
        loop {
            let Some(control) = &self.control else {
                return true;
            };
            match control.try_recv() {
                Ok(LoopRequest::Pause(ack)) => {
                    let _ = ack.send(());
                    if !self.park() {
                        return false;
                    }
                }
                Ok(LoopRequest::Resume(ack)) => {
                    let _ = ack.send(());
                }
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Blocks until a resume; false when the VM object is gone.
    fn park(&mut self) -> bool {
        let Some(control) = &self.control else {
            return true;
        };
        loop {
            match control.recv() {
                Ok(LoopRequest::Pause(ack)) => {
                    let _ = ack.send(());
                }
                Ok(LoopRequest::Resume(ack)) => {
                    let _ = ack.send(());
                    self.after_resume();
                    return true;
                }
                Err(_) => return false,
            }
        }
    }

    /// Packets that reached a TAP while paused (or while the VM was being
    /// built) raised their edge already: the TAP is edge-triggered.
    fn after_resume(&self) {
        for source in &self.sources {
            if let Source::Tap { name, net } = source {
                lock(net, name).process_rx();
            }
        }
    }
}
