//! Log lines a guest can cause, bounded.
//!
//! How often a bad register access, a malformed descriptor chain or a
//! notification for a missing queue happens is the guest's choice. With a
//! line for each, a guest fills the host's disk through the VMM's stderr
//! (10,000 notifications to a queue that does not exist gave 10,030
//! lines). So every message a guest can cause goes through one of
//!
//! - [`guest_warn!`]: the guest (its driver) did something wrong. Guest
//!   misbehaviour is logged at WARN at most: it is not the host's failure.
//! - [`host_error!`]: a host-side failure that a guest request can repeat
//!   (a disk I/O error, a TAP that cannot be read); [`host_warn!`] for a
//!   host-side condition that is not a failure of the VMM's own.
//!
//! Each call site logs its first [`BURST`] messages as they come, then at
//! most one per [`INTERVAL`], which carries the number of messages from
//! that site left out since the line before. [`report_due`] (the VMM's
//! device thread calls it every [`INTERVAL`]) and [`report_all`] (at exit)
//! write the counts still pending, so a storm that stops is accounted for
//! too. The limit is per call site, not per device: the message names the
//! device, and a guest that triggers the same message on two devices still
//! gets [`BURST`] lines, then one per interval, in all.
//!
//! The state is a few atomics per call site; the registry of sites with
//! pending counts takes a lock only when a site first suppresses a message.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

pub use log::Level;

/// Messages each call site logs before it is limited.
pub const BURST: u64 = 10;
/// Once limited, a call site logs at most one line per interval.
pub const INTERVAL: Duration = Duration::from_secs(10);
const INTERVAL_MS: u64 = INTERVAL.as_millis() as u64;

/// Messages left out since the process started, all call sites together.
static SUPPRESSED_TOTAL: AtomicU64 = AtomicU64::new(0);
/// Call sites that have left messages out at least once.
static REGISTRY: Mutex<Vec<&'static Site>> = Mutex::new(Vec::new());

/// Logs a message the guest caused, at WARN, limited per call site (see
/// the [module documentation](crate::log_limit)). Takes `format!` arguments.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static SITE: $crate::log_limit::Site = $crate::log_limit::Site::new(
            $crate::log_limit::Level::Warn,
            module_path!(),
            file!(),
            line!(),
        );
        SITE.log(format_args!($($arg)+));
    }};
}

/// Logs, at WARN, a host-side condition that a guest request can repeat
/// (a TAP that took part of a packet), limited per call site like
/// [`guest_warn!`].
#[macro_export]
macro_rules! host_warn {
    ($($arg:tt)+) => {{
        static SITE: $crate::log_limit::Site = $crate::log_limit::Site::new(
            $crate::log_limit::Level::Warn,
            module_path!(),
            file!(),
            line!(),
        );
        SITE.log(format_args!($($arg)+));
    }};
}

/// Logs, at ERROR, a host-side failure that a guest request can repeat,
/// limited per call site like [`guest_warn!`].
#[macro_export]
macro_rules! host_error {
    ($($arg:tt)+) => {{
        static SITE: $crate::log_limit::Site = $crate::log_limit::Site::new(
            $crate::log_limit::Level::Error,
            module_path!(),
            file!(),
            line!(),
        );
        SITE.log(format_args!($($arg)+));
    }};
}

/// One call site of [`guest_warn!`] or [`host_error!`] and what it logged.
pub struct Site {
    level: Level,
    /// The log target, as `log!` would use: filters by module keep working.
    module: &'static str,
    file: &'static str,
    line: u32,
    /// Messages from this site so far, logged or not.
    seen: AtomicU64,
    /// Messages left out since the last line from this site.
    suppressed: AtomicU64,
    /// When this site last wrote a line (ms on the process clock).
    last_line_ms: AtomicU64,
    registered: AtomicBool,
}

impl Site {
    pub const fn new(level: Level, module: &'static str, file: &'static str, line: u32) -> Self {
        Site {
            level,
            module,
            file,
            line,
            seen: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            last_line_ms: AtomicU64::new(0),
            registered: AtomicBool::new(false),
        }
    }

    /// Logs `args`, or counts it as suppressed.
    pub fn log(&'static self, args: fmt::Arguments<'_>) {
        // Nothing would be written: no need to count either.
        if !log::log_enabled!(target: self.module, self.level) {
            return;
        }
        self.log_at(now_ms(), args);
    }

    fn log_at(&'static self, now: u64, args: fmt::Arguments<'_>) {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if n < BURST {
            self.last_line_ms.store(now, Ordering::Relaxed);
            if n + 1 == BURST {
                self.write(format_args!(
                    "{args} [more messages like this are limited to one per {} s]",
                    INTERVAL.as_secs()
                ));
            } else {
                self.write(args);
            }
            return;
        }
        let last = self.last_line_ms.load(Ordering::Relaxed);
        // The exchange makes one thread of several the one that logs.
        if now.saturating_sub(last) >= INTERVAL_MS
            && self
                .last_line_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let left_out = self.suppressed.swap(0, Ordering::Relaxed);
            if left_out == 0 {
                self.write(args);
            } else {
                self.write(format_args!(
                    "{args} [{left_out} more like this left out in the last {} s]",
                    (now - last) / 1000
                ));
            }
            return;
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        SUPPRESSED_TOTAL.fetch_add(1, Ordering::Relaxed);
        if !self.registered.swap(true, Ordering::Relaxed) {
            REGISTRY
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self);
        }
    }

    /// Writes the count of messages left out, if any and if `force` or
    /// this site's interval has passed.
    fn report(&self, now: u64, force: bool) {
        let last = self.last_line_ms.load(Ordering::Relaxed);
        if self.suppressed.load(Ordering::Relaxed) == 0
            || (!force && now.saturating_sub(last) < INTERVAL_MS)
            || self
                .last_line_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let left_out = self.suppressed.swap(0, Ordering::Relaxed);
        if left_out > 0 {
            self.write(format_args!(
                "{left_out} more message(s) like the last one from {}:{} left out in the last {} s",
                self.file,
                self.line,
                (now - last) / 1000
            ));
        }
    }

    fn write(&self, args: fmt::Arguments<'_>) {
        log::log!(target: self.module, self.level, "{args}");
    }
}

/// Milliseconds since this module first looked at the clock.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Writes, for each call site whose interval has passed, how many of its
/// messages were left out since its last line. Call it about every
/// [`INTERVAL`]: without it, a storm that stops is only accounted for at
/// the site's next message.
pub fn report_due() {
    report(false);
}

/// Writes every pending count of messages left out, interval or not (at exit).
pub fn report_all() {
    report(true);
}

fn report(force: bool) {
    let now = now_ms();
    let sites = REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for site in sites {
        site.report(now, force);
    }
}

/// Messages left out since the process started, all call sites together.
pub fn suppressed_total() -> u64 {
    SUPPRESSED_TOTAL.load(Ordering::Relaxed)
}

/// Log lines written on one thread, for tests that count what a guest
/// can make the VMM log.
#[cfg(any(test, feature = "test-utils"))]
pub mod capture {
    use std::cell::RefCell;
    use std::sync::{Arc, Mutex, Once};

    use log::{Level, LevelFilter, Log, Metadata, Record};

    type Lines = Arc<Mutex<Vec<(Level, String)>>>;

    thread_local! {
        static SINK: RefCell<Option<Lines>> = const { RefCell::new(None) };
    }

    struct ThreadLogger;

    impl Log for ThreadLogger {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.level() <= Level::Info
        }

        fn log(&self, record: &Record<'_>) {
            if !self.enabled(record.metadata()) {
                return;
            }
            let _ = SINK.try_with(|sink| {
                if let Some(lines) = &*sink.borrow() {
                    lines
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((record.level(), record.args().to_string()));
                }
            });
        }

        fn flush(&self) {}
    }

    static LOGGER: ThreadLogger = ThreadLogger;

    /// Keeps every line at INFO or above that the calling thread logs
    /// while it lives; lines from other threads are dropped. Installs the
    /// process's logger on first use: the test binary must have no other.
    pub struct Capture {
        lines: Lines,
    }

    impl Capture {
        pub fn start() -> Capture {
            static INSTALL: Once = Once::new();
            INSTALL.call_once(|| {
                log::set_logger(&LOGGER).expect("no other logger in this test binary");
                log::set_max_level(LevelFilter::Info);
            });
            let lines = Lines::default();
            SINK.with(|s| *s.borrow_mut() = Some(lines.clone()));
            Capture { lines }
        }

        /// The lines so far, with their levels.
        pub fn lines(&self) -> Vec<(Level, String)> {
            self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
    }

    impl Drop for Capture {
        fn drop(&mut self) {
            let _ = SINK.try_with(|s| s.borrow_mut().take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::capture::Capture;
    use super::*;

    fn site() -> &'static Site {
        Box::leak(Box::new(Site::new(Level::Warn, module_path!(), file!(), 1)))
    }

    #[test]
    fn a_burst_then_one_line_per_interval_with_the_count_left_out() {
        let cap = Capture::start();
        let s = site();
        let before = suppressed_total();
        for i in 0..1000 {
            s.log_at(5, format_args!("bad access {i}"));
        }
        let lines = cap.lines();
        assert_eq!(lines.len() as u64, BURST);
        assert_eq!(lines[0], (Level::Warn, "bad access 0".to_string()));
        assert!(
            lines[9].1.ends_with("limited to one per 10 s]"),
            "{lines:?}"
        );
        assert!(suppressed_total() >= before + 1000 - BURST);

        // Within the interval: still nothing; after it, one line with the count.
        s.log_at(5 + INTERVAL_MS - 1, format_args!("bad access x"));
        assert_eq!(cap.lines().len() as u64, BURST);
        s.log_at(5 + INTERVAL_MS, format_args!("bad access y"));
        s.log_at(5 + INTERVAL_MS, format_args!("bad access z"));
        let lines = cap.lines();
        assert_eq!(lines.len() as u64, BURST + 1);
        assert_eq!(
            lines[10].1,
            "bad access y [991 more like this left out in the last 10 s]"
        );

        // A storm that stops is reported by the periodic call, once.
        s.report(5 + INTERVAL_MS + 1, false);
        assert_eq!(cap.lines().len() as u64, BURST + 1, "not due yet");
        s.report(5 + 2 * INTERVAL_MS, false);
        let lines = cap.lines();
        assert_eq!(lines.len() as u64, BURST + 2);
        assert!(
            lines[11].1.starts_with(
                "1 more message(s) like the last one from devices/src/log_limit.rs:1 left out"
            ),
            "{}",
            lines[11].1
        );
        s.report(5 + 4 * INTERVAL_MS, true);
        assert_eq!(
            cap.lines().len() as u64,
            BURST + 2,
            "nothing left to report"
        );

        // Later, a lone message is logged at once, with nothing to count.
        s.log_at(5 + 5 * INTERVAL_MS, format_args!("bad access w"));
        assert_eq!(cap.lines()[12].1, "bad access w");
    }

    #[test]
    fn the_macros_log_at_their_level_and_only_on_the_capturing_thread() {
        let cap = Capture::start();
        for _ in 0..3 {
            crate::guest_warn!("guest did {}", "wrong");
            crate::host_error!("host failed {}", 7);
        }
        std::thread::spawn(|| crate::guest_warn!("elsewhere"))
            .join()
            .unwrap();
        let lines = cap.lines();
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert_eq!(lines[0], (Level::Warn, "guest did wrong".to_string()));
        assert_eq!(lines[1], (Level::Error, "host failed 7".to_string()));
    }
}
