//! A terminal on stdin is switched to character-at-a-time input without
//! echo while COM1 reads it, so the guest's shell sees keys as typed and
//! echoes them itself; Ctrl-C still reaches the VMM (as SIGINT, which ends
//! the VM cleanly). The old settings are kept process-wide and come back
//! on every way out: [`restore`] is called when `vmm run` ends (whatever
//! ended it: the guest, QMP quit, SIGINT, SIGTERM, SIGHUP, an error), by
//! the panic hook, and when the guard drops.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use log::{debug, warn};

/// The terminal's settings before raw mode, while raw mode is on.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

fn saved() -> std::sync::MutexGuard<'static, Option<libc::termios>> {
    SAVED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Raw mode on stdin while it lives; see [`restore`].
pub struct RawStdin(());

impl RawStdin {
    /// None when stdin is not a terminal (a pipe, a file, /dev/null).
    pub fn enable() -> Option<RawStdin> {
        let fd = libc::STDIN_FILENO;
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        let mut t = MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills the struct it is given on success.
        if unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) } != 0 {
            debug!("stdin: tcgetattr failed; leaving the terminal as it is");
            return None;
        }
        // SAFETY: initialised by the successful tcgetattr above.
        let before = unsafe { t.assume_init() };
        let mut raw = before;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ECHONL | libc::IEXTEN);
        raw.c_iflag &= !(libc::ICRNL | libc::IXON);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        let mut s = saved();
        // SAFETY: raw is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            debug!("stdin: tcsetattr failed; leaving the terminal as it is");
            return None;
        }
        // A second VM in this process keeps the first settings.
        s.get_or_insert(before);
        Some(RawStdin(()))
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        restore();
    }
}

/// Gives the terminal on stdin its settings from before raw mode back, if
/// raw mode is on; does nothing otherwise (so every exit path may call it).
pub fn restore() {
    let Some(t) = saved().take() else {
        return;
    };
    // SAFETY: restores settings tcgetattr read from this fd.
    if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) } != 0 {
        warn!(
            "restoring the terminal's settings failed: {}; run `stty sane` to get it back",
            std::io::Error::last_os_error()
        );
    }
}
