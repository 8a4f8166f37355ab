//! Noticing a front end whose guest RAM this process cannot see.
//!
//! A front end with private RAM (share=off) still hands over an fd of the
//! backing file, and mapping it succeeds: this process then reads the file's
//! pages while the guest writes its own private copies. Nothing fails; the
//! driver's kicks just never show new available buffers, and the guest waits
//! for ever. This watch turns that into a log line.

use log::warn;

/// Kicks in a row that showed nothing new, after the queue had served
/// requests, before the log says so: past the occasional kick that races
/// with the device's own polling of the ring.
const EMPTY_KICKS_AFTER_SERVICE: u32 = 16;

/// One queue's kicks since its ring was set up.
#[derive(Debug, Default)]
pub struct KickWatch {
    empty_kicks: u32,
    ever_served: bool,
    warned: bool,
}

impl KickWatch {
    /// Records a kick after which `served` chains were taken from the ring.
    /// Returns true when this kick made the watch warn.
    pub fn kicked(&mut self, served: usize, what: &str, queue: usize) -> bool {
        if served > 0 {
            self.ever_served = true;
            self.empty_kicks = 0;
            return false;
        }
        self.empty_kicks += 1;
        // The first call after a ring starts is the framework's own look at
        // it (for buffers added before it was enabled), not a kick. A driver
        // kicks only after making buffers available, so a real kick that
        // shows none, before any ever showed, means its writes are not in
        // this mapping.
        let suspicious = if self.ever_served {
            self.empty_kicks >= EMPTY_KICKS_AFTER_SERVICE
        } else {
            self.empty_kicks >= 2
        };
        if !suspicious || self.warned {
            return false;
        }
        self.warned = true;
        warn!(
            "{what}: queue {queue}: the driver kicked {} time(s) but its ring shows no new request in the memory this process mapped; the front end's guest RAM is probably private (share=off), so the guest's writes never reach this process. vhost-user needs share=on RAM (memory-backend-memfd or -file with share=on); the guest will wait for ever",
            if self.ever_served {
                self.empty_kicks
            } else {
                self.empty_kicks - 1
            }
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_kick_with_nothing_available_warns_once() {
        let mut w = KickWatch::default();
        assert!(!w.kicked(0, "t", 0), "the look at a ring as it starts");
        assert!(w.kicked(0, "t", 0));
        assert!(!w.kicked(0, "t", 0), "one warning per ring");
    }

    #[test]
    fn the_look_at_a_starting_ring_then_service_never_warns() {
        let mut w = KickWatch::default();
        assert!(!w.kicked(0, "t", 0));
        assert!(!w.kicked(1, "t", 0));
        assert!(!w.kicked(0, "t", 0));
    }

    #[test]
    fn empty_kicks_after_service_warn_only_when_they_persist() {
        let mut w = KickWatch::default();
        assert!(!w.kicked(3, "t", 0));
        for _ in 1..EMPTY_KICKS_AFTER_SERVICE {
            assert!(!w.kicked(0, "t", 0));
        }
        assert!(w.kicked(0, "t", 0));
    }

    #[test]
    fn service_resets_the_count() {
        let mut w = KickWatch::default();
        w.kicked(1, "t", 0);
        for _ in 0..EMPTY_KICKS_AFTER_SERVICE - 1 {
            w.kicked(0, "t", 0);
        }
        w.kicked(1, "t", 0);
        assert!(!w.kicked(0, "t", 0));
    }
}
