//! The QMP socket server: one thread accepting clients on a Unix socket and
//! serving them one at a time, as QEMU does.
//!
//! Per client there is one reader (the server thread itself: it reads,
//! frames, dispatches and waits for each reply to be written) and one
//! writer thread that owns the socket's sending side and writes the lines
//! queued to it, replies and events alike, in order.
//!
//! Events never block the VM: [`EventSender::emit`] takes a mutex held
//! only for queueing and does a non-blocking push onto the client's
//! bounded queue ([`EVENT_QUEUE`] lines). A client that lets the queue
//! fill, or whose socket stays full for [`WRITE_TIMEOUT`], is not reading:
//! it is disconnected, and the next client is served.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, warn};
use serde_json::Value;

use super::commands::Command;
use super::protocol::{self, Frame, Framer, Outcome, QmpError, Reply, Session};
use super::ControlError;

/// What the VM implements to serve QMP commands.
///
/// The server calls it from its own thread, one command at a time, only
/// for clients that completed `qmp_capabilities`.
pub trait QmpHandler: Send + Sync + 'static {
    /// One parsed command from a client that negotiated capabilities.
    /// `Ok(v)` becomes `{"return": v}` (give an empty object, `json!({})`,
    /// for commands that return nothing); `Err(e)` becomes
    /// `{"error": {"class": ..., "desc": ...}}`.
    ///
    /// The socket waits while this runs: a long job (a migration) should
    /// be started in the background and this should return at once.
    /// Events (`STOP` for `stop`, ...) may be emitted from here or from any
    /// thread; those emitted before returning reach the client before the
    /// reply, as with QEMU.
    fn execute(&self, command: Command) -> Result<Value, QmpError>;

    /// Called after the successful reply to `command` has been written to
    /// the client and flushed (or could not be, because the client went
    /// away). This is where a deferred action belongs: `quit` ends the
    /// process here, so the client always sees `{"return": {}}` first.
    /// Not called when `execute` returned an error. Default: nothing.
    fn after_reply(&self, command: &Command) {
        let _ = command;
    }
}

/// How long a write to a client may wait for room in the socket before
/// the client is taken to be stuck and is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many lines (events and replies) may wait for a slow client before
/// it is disconnected.
pub const EVENT_QUEUE: usize = 1024;

/// Where the server listens, as given to `--qmp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpListen {
    /// Bind a new socket at this path.
    Path(PathBuf),
    /// An already-listening Unix socket inherited from the parent process.
    /// The server takes ownership of the descriptor.
    Fd(RawFd),
}

impl QmpListen {
    /// Parses QEMU's `-qmp` spellings: `unix:PATH`, `unix:path=PATH`,
    /// `unix:fd=N`, each optionally followed by `,server=on,wait=off`
    /// (also `server`, `nowait`, `wait=no`...), which describe what this
    /// server does anyway and are ignored. `server=off` (connecting out)
    /// and `wait=on` (holding the VM until a client connects) are refused.
    /// A comma inside PATH is written `,,`, as in QEMU.
    pub fn parse(s: &str) -> Result<Self, ControlError> {
        let bad = |reason: String| ControlError::Address {
            spec: s.to_string(),
            reason,
        };
        let Some(rest) = s.strip_prefix("unix:") else {
            return Err(bad(
                "expected unix:PATH or unix:fd=N (optionally with ,server=on,wait=off)".into(),
            ));
        };
        let items = split_qemu_opts(rest);
        let mut target = None;
        for (i, item) in items.iter().enumerate() {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item.as_str(), None),
            };
            if i == 0 {
                target = Some(match (key, value) {
                    ("fd", Some(n)) => {
                        QmpListen::Fd(n.parse().ok().filter(|fd: &RawFd| *fd >= 0).ok_or_else(
                            || bad(format!("fd={n} is not a file descriptor number")),
                        )?)
                    }
                    ("path", Some(p)) => QmpListen::Path(PathBuf::from(p)),
                    // A path, even one with '=' in it.
                    _ => QmpListen::Path(PathBuf::from(item)),
                });
                continue;
            }
            match (key, value) {
                ("server", None | Some("on" | "yes" | "true")) => {}
                ("nowait", None) | ("wait", Some("off" | "no" | "false")) => {}
                ("server", Some(_)) => {
                    return Err(bad(
                        "server=off is not supported: vmm listens for QMP clients".into(),
                    ))
                }
                ("wait", _) => {
                    return Err(bad(
                        "wait=on is not supported: vmm does not hold the VM until a client connects; use wait=off".into(),
                    ))
                }
                _ => {
                    return Err(bad(format!(
                        "unknown option '{item}'; after the path or fd=N only server=on and wait=off are accepted"
                    )))
                }
            }
        }
        if target == Some(QmpListen::Path(PathBuf::new())) {
            return Err(bad("the socket path is empty".into()));
        }
        target.ok_or_else(|| bad("no socket path or fd=N given".into()))
    }
}

/// Splits QEMU option text at commas, `,,` standing for a literal comma.
fn split_qemu_opts(s: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                items.last_mut().unwrap().push(',');
            } else {
                items.push(String::new());
            }
        } else {
            items.last_mut().unwrap().push(c);
        }
    }
    items
}

fn bind(listen: QmpListen) -> Result<UnixListener, ControlError> {
    match listen {
        QmpListen::Path(path) => bind_path(&path),
        QmpListen::Fd(fd) => adopt_fd(fd),
    }
}

fn bind_path(path: &Path) -> Result<UnixListener, ControlError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse(path.to_path_buf()));
            }
            debug!("replacing stale socket {}", path.display());
            fs::remove_file(path).map_err(|source| ControlError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => return Err(ControlError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ControlError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

fn adopt_fd(fd: RawFd) -> Result<UnixListener, ControlError> {
    let bad = |reason: String| ControlError::Fd { fd, reason };
    let check = |opt, what: &str| {
        sockopt(fd, opt).map_err(|e| match e.raw_os_error() {
            Some(libc::EBADF) => bad("it is not an open file descriptor".into()),
            Some(libc::ENOTSOCK) => bad("it is not a socket".into()),
            _ => bad(format!("cannot read its {what}: {e}")),
        })
    };
    if check(libc::SO_DOMAIN, "domain")? != libc::AF_UNIX {
        return Err(bad("it is not a Unix socket".into()));
    }
    if check(libc::SO_TYPE, "type")? != libc::SOCK_STREAM {
        return Err(bad("it is not a stream socket".into()));
    }
    if check(libc::SO_ACCEPTCONN, "state")? == 0 {
        return Err(bad(
            "it is not listening (the parent must bind and listen)".into()
        ));
    }
    // Inherited descriptors may lack close-on-exec.
    // SAFETY: fcntl on a descriptor checked above to be an open socket.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
    // SAFETY: the descriptor is an open listening Unix stream socket, and
    // QmpListen::Fd hands its ownership to the server.
    Ok(unsafe { UnixListener::from_raw_fd(fd) })
}

/// A line queued for the client's writer thread; `ack` is told whether it
/// was written.
struct Line {
    bytes: Vec<u8>,
    ack: Option<mpsc::Sender<bool>>,
}

/// The connected client, as the event path sees it.
struct Client {
    queue: SyncSender<Line>,
    /// Past `qmp_capabilities`: events go to it.
    negotiated: bool,
    /// To cut the connection when the client stops reading.
    stream: UnixStream,
}

#[derive(Default)]
struct Shared {
    client: Mutex<Option<Client>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<Client>> {
        // A panic while holding this lock leaves nothing half-done.
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Queues a line for `slot`'s client; on a full queue the client is cut
/// off. Returns false when there is no client (any more).
fn enqueue(slot: &mut Option<Client>, line: Line) -> bool {
    let Some(client) = slot.as_mut() else {
        return false;
    };
    match client.queue.try_send(line) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            warn!("QMP client is not reading ({EVENT_QUEUE} messages waiting); disconnecting it");
            let _ = client.stream.shutdown(std::net::Shutdown::Both);
            *slot = None;
            false
        }
        Err(TrySendError::Disconnected(_)) => {
            *slot = None;
            false
        }
    }
}

/// Sends events to the connected client. Cloneable; cheap to call from any
/// thread.
#[derive(Clone)]
pub struct EventSender {
    shared: Arc<Shared>,
}

impl EventSender {
    /// Sends event `event` with `data` (omitted from the message when
    /// `None`, as QEMU does for STOP and RESUME) and the current wall-clock
    /// time, to the client if one is connected and past
    /// `qmp_capabilities`; otherwise the event is dropped, as QEMU drops
    /// events nobody listens to. Never waits on the client.
    pub fn emit(&self, event: &str, data: Option<Value>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let bytes = protocol::event_line(event, data.as_ref(), now);
        let mut slot = self.shared.lock();
        if slot.as_ref().is_some_and(|c| c.negotiated) {
            enqueue(&mut slot, Line { bytes, ack: None });
        }
    }

    /// As [`EventSender::emit`], then waits (at most `timeout`) until the
    /// event is written to the client: for the last event before the
    /// process ends (SHUTDOWN), which would otherwise die in the queue.
    pub fn emit_and_flush(&self, event: &str, data: Option<Value>, timeout: Duration) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let bytes = protocol::event_line(event, data.as_ref(), now);
        let (tx, rx) = mpsc::channel();
        {
            let mut slot = self.shared.lock();
            if !slot.as_ref().is_some_and(|c| c.negotiated)
                || !enqueue(
                    &mut slot,
                    Line {
                        bytes,
                        ack: Some(tx),
                    },
                )
            {
                return;
            }
        }
        let _ = rx.recv_timeout(timeout);
    }

    /// Whether a client past `qmp_capabilities` is connected now.
    pub fn has_client(&self) -> bool {
        self.shared.lock().as_ref().is_some_and(|c| c.negotiated)
    }
}

impl std::fmt::Debug for EventSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSender")
            .field("client", &self.has_client())
            .finish()
    }
}

/// The QMP server.
pub struct QmpServer;

impl QmpServer {
    /// Binds the socket at `listen` (or takes the inherited one) and serves
    /// it on its own thread, one client at a time, for as long as the
    /// process lives. Returns the event sender and the thread's handle.
    ///
    /// A stale socket file at the path is replaced; a live one (another
    /// process accepts on it) and a path that exists and is not a socket
    /// are errors naming the path.
    pub fn start(
        listen: QmpListen,
        handler: Arc<dyn QmpHandler>,
    ) -> Result<(EventSender, JoinHandle<()>), ControlError> {
        Self::bind(listen)?.serve(handler)
    }

    /// Binds the socket at `listen` (or takes the inherited one) without
    /// serving it yet: clients that connect wait in the listen backlog
    /// until [`BoundQmp::serve`]. This lets `vmm run` make the socket
    /// exist before the guest runs while answering only once there is a
    /// VM to command.
    pub fn bind(listen: QmpListen) -> Result<BoundQmp, ControlError> {
        let what = match &listen {
            QmpListen::Path(p) => p.display().to_string(),
            QmpListen::Fd(fd) => format!("fd {fd}"),
        };
        Ok(BoundQmp {
            listener: bind(listen)?,
            what,
        })
    }
}

/// A QMP socket that is bound and listening but not yet served.
pub struct BoundQmp {
    listener: UnixListener,
    what: String,
}

impl BoundQmp {
    /// Serves the socket on its own thread, one client at a time, for as
    /// long as the process lives. Returns the event sender and the
    /// thread's handle.
    pub fn serve(
        self,
        handler: Arc<dyn QmpHandler>,
    ) -> Result<(EventSender, JoinHandle<()>), ControlError> {
        let shared = Arc::new(Shared::default());
        let events = EventSender {
            shared: shared.clone(),
        };
        let listener = self.listener;
        let thread = thread::Builder::new()
            .name("qmp".into())
            .spawn(move || serve(listener, shared, handler))
            .map_err(ControlError::Thread)?;
        info!("QMP listening on {}", self.what);
        Ok((events, thread))
    }
}

fn serve(listener: UnixListener, shared: Arc<Shared>, handler: Arc<dyn QmpHandler>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                debug!("QMP client connected");
                if let Err(e) = serve_client(stream, &shared, handler.as_ref()) {
                    debug!("QMP client: {e}");
                }
                debug!("QMP client gone");
            }
            Err(e) => {
                // EMFILE and the like: wait rather than spin.
                warn!("QMP accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Writes all of `buf`, without SIGPIPE, waiting at most the socket's send
/// timeout for room.
fn send_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is a valid slice; fd is the client's socket.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not read for too long",
                    ))
                }
                _ => return Err(e),
            }
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// The client's writer thread: writes queued lines in order until the queue
/// closes. After a failed write it only acknowledges (false) what is left.
fn writer(stream: UnixStream, queue: Receiver<Line>) {
    let mut broken = false;
    for line in queue {
        if !broken {
            if let Err(e) = send_all(stream.as_raw_fd(), &line.bytes) {
                debug!("QMP write failed: {e}");
                broken = true;
                // Wake the reader so the next client gets its turn.
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
        if let Some(ack) = line.ack {
            let _ = ack.send(!broken);
        }
    }
}

/// Sends `bytes` to the current client and waits until it is written.
/// With `negotiated`, the client is marked as past `qmp_capabilities` in
/// the same critical section, so no event can come before this reply.
fn send_reply(shared: &Shared, bytes: Vec<u8>, negotiated: bool) -> bool {
    let (tx, rx) = mpsc::channel();
    {
        let mut slot = shared.lock();
        if !enqueue(
            &mut slot,
            Line {
                bytes,
                ack: Some(tx),
            },
        ) {
            return false;
        }
        if negotiated {
            if let Some(c) = slot.as_mut() {
                c.negotiated = true;
            }
        }
    }
    rx.recv().unwrap_or(false)
}

fn serve_client(stream: UnixStream, shared: &Shared, handler: &dyn QmpHandler) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (tx, rx) = mpsc::sync_channel(EVENT_QUEUE);
    let write_half = stream.try_clone()?;
    let writer_thread = thread::Builder::new()
        .name("qmp-writer".into())
        .spawn(move || writer(write_half, rx))?;
    *shared.lock() = Some(Client {
        queue: tx,
        negotiated: false,
        stream: stream.try_clone()?,
    });

    let result = converse(&stream, shared, handler);

    // Closing the queue ends the writer once it has written what is queued.
    *shared.lock() = None;
    let _ = writer_thread.join();
    result
}

/// Runs handler code so that a panic in it becomes an error reply instead
/// of ending the QMP thread (and with it every later client).
fn guarded(name: &str, f: impl FnOnce() -> Result<Value, QmpError>) -> Result<Value, QmpError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        error!("QMP command {name} panicked");
        Err(QmpError::generic(format!(
            "internal error: the VM failed while running {name}"
        )))
    })
}

fn converse(mut stream: &UnixStream, shared: &Shared, handler: &dyn QmpHandler) -> io::Result<()> {
    if !send_reply(shared, protocol::greeting_line(), false) {
        return Ok(());
    }
    let mut session = Session::new();
    let mut framer = Framer::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for frame in framer.feed(&buf[..n]) {
            let delivered = match frame {
                Frame::Value(v) => match session.handle(v) {
                    Outcome::Reply(r) => send_reply(shared, r.line(), false),
                    Outcome::Negotiated(r) => send_reply(shared, r.line(), true),
                    Outcome::Execute { command, id } => {
                        let kept = command.clone();
                        let result = guarded(kept.name(), || handler.execute(command));
                        let ok = result.is_ok();
                        let delivered = send_reply(shared, Reply { result, id }.line(), false);
                        if ok {
                            let _ = guarded(kept.name(), || {
                                handler.after_reply(&kept);
                                Ok(Value::Null)
                            });
                        }
                        delivered
                    }
                },
                Frame::Error(desc) => send_reply(
                    shared,
                    Reply::err(QmpError::generic(desc), None).line(),
                    false,
                ),
                Frame::TooLong => {
                    let desc = format!(
                        "JSON parse error, input longer than {} bytes; disconnecting",
                        protocol::MAX_INPUT
                    );
                    send_reply(
                        shared,
                        Reply::err(QmpError::generic(desc), None).line(),
                        false,
                    );
                    return Ok(());
                }
            };
            if !delivered {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests;
