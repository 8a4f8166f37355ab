//! Damaged streams: every change is an error, never a panic, never Ok.

use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;

fn stream() -> &'static [u8] {
    static STREAM: OnceLock<Vec<u8>> = OnceLock::new();
    STREAM.get_or_init(small_stream)
}

#[test]
fn every_flipped_byte_is_an_error() {
    let stream = stream();
    verify(stream).unwrap();
    for xor in [0xff, 0x01, 0x80] {
        for at in 0..stream.len() {
            let mut bad = stream.to_vec();
            bad[at] ^= xor;
            let result = verify(&bad);
            assert!(result.is_err(), "byte {at} ^ {xor:#x}: accepted");
        }
    }
}

#[test]
fn every_flipped_byte_is_an_error_when_restoring() {
    let stream = stream();
    for at in 0..stream.len() {
        let mut bad = stream.to_vec();
        bad[at] ^= 0x20;
        let mem = new_mem(&[(GuestAddress(0), 8 * PAGE)]);
        let result = Reader::new(bad.as_slice()).and_then(|mut r| {
            r.sections()?;
            r.ram_and_end(&mut GuestRamSink(&mem))
        });
        assert!(result.is_err(), "byte {at}: accepted");
    }
}

#[test]
fn every_truncation_is_truncated() {
    let stream = stream();
    for cut in 0..stream.len() {
        match verify(&stream[..cut]) {
            Err(FormatError::Truncated { offset, .. }) => assert_eq!(offset, cut as u64),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let stream = stream();
    let len = stream.len() as u64;
    for tail in [
        vec![0u8],
        vec![TAG_END],
        stream.to_vec(),
        end(4, 3 * PAGE as u64),
    ] {
        let mut bad = stream.to_vec();
        bad.extend_from_slice(&tail);
        match verify(&bad) {
            Err(FormatError::TrailingData { offset }) => assert_eq!(offset, len),
            other => panic!("{} trailing bytes: {other:?}", tail.len()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_flips_are_errors(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
    ) {
        let stream = stream();
        let mut bad = stream.to_vec();
        for (at, xor) in flips {
            bad[at.index(stream.len())] ^= xor;
        }
        prop_assume!(bad != stream);
        prop_assert!(verify(&bad).is_err());
    }

    #[test]
    fn random_truncations_are_errors(cut in any::<prop::sample::Index>(), xor in 0u8..=255) {
        let stream = stream();
        let cut = cut.index(stream.len());
        let mut bad = stream[..cut].to_vec();
        if let Some(last) = bad.last_mut() {
            *last ^= xor;
        }
        prop_assert!(verify(&bad).is_err());
    }

    #[test]
    fn garbage_is_an_error(
        prefix in 0usize..4,
        garbage in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        // Garbage alone, or after a valid magic, header, or header and config.
        let start = match prefix {
            0 => Vec::new(),
            1 => MAGIC.to_vec(),
            2 => header(FORMAT_VERSION),
            _ => concat(&[header(FORMAT_VERSION), section("config", b"x")]),
        };
        let bad = concat(&[start, garbage]);
        prop_assert!(verify(&bad).is_err());
    }

    #[test]
    fn garbage_records_are_errors(
        tag in 0u8..5,
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        // A plausible tag followed by garbage, where a record is expected.
        let mut bad = concat(&[header(FORMAT_VERSION), section("config", b"x"), vec![tag]]);
        bad.extend_from_slice(&garbage);
        prop_assert!(verify(&bad).is_err());
    }
}
