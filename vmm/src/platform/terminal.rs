//! A terminal on stdin is switched to character-at-a-time input without
//! echo while COM1 reads it, so the guest's shell sees keys as typed and
//! echoes them itself; Ctrl-C still reaches the VMM. The old settings come
//! back when the guard drops.

use std::mem::MaybeUninit;

use log::debug;

pub struct RawStdin {
    saved: libc::termios,
}

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
        let saved = unsafe { t.assume_init() };
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ECHONL | libc::IEXTEN);
        raw.c_iflag &= !(libc::ICRNL | libc::IXON);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: raw is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            debug!("stdin: tcsetattr failed; leaving the terminal as it is");
            return None;
        }
        Some(RawStdin { saved })
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}
