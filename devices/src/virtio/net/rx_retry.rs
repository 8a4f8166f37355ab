//! Reading a TAP again after a read error.
//!
//! The TAP is polled edge-triggered, and a pass over it that ends in a
//! read error leaves the packets still queued there unreported: no new
//! edge comes for them, and without a retry RX would stop until the next
//! packet or the guest's next RX kick. A one-shot timer brings the next
//! pass instead: after 10 ms, the delay doubling up to 1 s while the
//! errors go on (a TAP whose interface was deleted fails every read), and
//! starting over after a pass without one.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

const FIRST_DELAY: Duration = Duration::from_millis(10);
const MAX_DELAY: Duration = Duration::from_secs(1);

/// The retry timer of one RX queue; poll [`RxRetry::fd`] for input and
/// call [`RxRetry::fired`], then read the TAP, when it is readable.
pub struct RxRetry {
    timer: TimerFd,
    delay: Duration,
}

impl RxRetry {
    pub fn new() -> io::Result<RxRetry> {
        Ok(RxRetry {
            timer: TimerFd::new()?,
            delay: FIRST_DELAY,
        })
    }

    /// The timer's fd: readable when the TAP is to be read again.
    pub fn fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// After a pass over the TAP: arms the timer when the pass ended in a
    /// read error (`tap_error`), and starts the delays over otherwise.
    pub fn after_pass(&mut self, tap_error: bool) -> io::Result<()> {
        if !tap_error {
            self.delay = FIRST_DELAY;
            return Ok(());
        }
        self.timer.reset(self.delay, None)?;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        Ok(())
    }

    /// The delay the next error will wait.
    pub fn next_delay(&self) -> Duration {
        self.delay
    }

    /// Takes the timer's expiry once its fd is readable; true when it had
    /// expired (false after a [`RxRetry::cancel`] raced with the poll).
    pub fn fired(&mut self) -> bool {
        let mut count = 0u64;
        // The fd is blocking: read it only when it has an expiry.
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd; a zero timeout never blocks.
        if unsafe { libc::poll(&mut pfd, 1, 0) } != 1 {
            return false;
        }
        // SAFETY: reads 8 bytes into `count`, which holds 8.
        let n = unsafe { libc::read(self.fd(), (&mut count as *mut u64).cast(), 8) };
        n == 8 && count > 0
    }

    /// Disarms the timer (device reset) and starts the delays over.
    pub fn cancel(&mut self) -> io::Result<()> {
        self.delay = FIRST_DELAY;
        self.timer.clear().map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::netns::wait_readable;
    use std::time::Instant;

    #[test]
    fn an_error_arms_the_timer_and_the_delay_doubles_up_to_a_second() {
        let mut r = RxRetry::new().unwrap();
        assert!(!r.fired(), "a new timer has not fired");
        r.after_pass(false).unwrap();
        assert!(!r.fired(), "a pass without an error arms nothing");

        let t = Instant::now();
        r.after_pass(true).unwrap();
        assert!(wait_readable(r.fd(), Duration::from_secs(5)));
        assert!(t.elapsed() >= FIRST_DELAY);
        assert!(r.fired());
        assert!(!r.fired(), "one expiry is taken once");

        let mut seen = vec![];
        for _ in 0..9 {
            seen.push(r.next_delay().as_millis());
            r.after_pass(true).unwrap();
        }
        assert_eq!(seen, [20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        r.after_pass(false).unwrap();
        assert_eq!(r.next_delay(), FIRST_DELAY);

        r.after_pass(true).unwrap();
        r.cancel().unwrap();
        std::thread::sleep(FIRST_DELAY * 3);
        assert!(!r.fired(), "a cancelled timer does not fire");
    }
}
