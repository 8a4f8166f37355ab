//! Device counters (packets, bytes, pages, malformed chains) are
//! diagnostics that a snapshot carries, so a restored one may already be
//! at `u64::MAX`: they stop there instead of wrapping or panicking.

/// Adds `n` to `counter`, stopping at `u64::MAX`.
pub fn bump(counter: &mut u64, n: u64) {
    *counter = counter.saturating_add(n);
}

#[cfg(test)]
mod tests {
    use super::bump;

    #[test]
    fn a_counter_stops_at_the_maximum() {
        let mut c = u64::MAX - 1;
        bump(&mut c, 5);
        assert_eq!(c, u64::MAX);
        bump(&mut c, 1);
        assert_eq!(c, u64::MAX);
    }
}
