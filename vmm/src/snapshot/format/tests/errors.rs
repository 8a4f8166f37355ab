//! Each kind of bad stream gets its own error, naming what and where.

use std::io::{self, Write};

use super::*;

fn cfg() -> Vec<u8> {
    concat(&[header(FORMAT_VERSION), section("config", b"c")])
}

/// Restores `bytes` into a 1 MiB RAM at 0.
fn restore(bytes: &[u8]) -> Result<ReadStats, FormatError> {
    let mem = new_mem(&[(GuestAddress(0), MIB as usize)]);
    let mut r = Reader::new(bytes)?;
    r.sections()?;
    r.ram_and_end(&mut GuestRamSink(&mem))
}

#[track_caller]
fn one_line(e: &FormatError) -> String {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    msg
}

#[test]
fn not_a_snapshot() {
    for bytes in [
        &b"hello"[..],
        b"NOTASNAPSHOT at all",
        b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0",
    ] {
        let e = verify(bytes).unwrap_err();
        assert!(matches!(e, FormatError::NotASnapshot { .. }), "{e:?}");
        assert!(one_line(&e).contains("not a snapshot"));
    }
    let e = verify(b"").unwrap_err();
    assert!(
        matches!(e, FormatError::Truncated { offset: 0, .. }),
        "{e:?}"
    );
    assert!(one_line(&e).contains("empty"));
    // A prefix of the magic is a truncated snapshot.
    let e = verify(b"VMMS").unwrap_err();
    assert!(
        matches!(e, FormatError::Truncated { offset: 4, .. }),
        "{e:?}"
    );
}

#[test]
fn future_version() {
    let bytes = concat(&[header(3), section("config", b"c"), end(1, 0)]);
    let e = verify(&bytes).unwrap_err();
    assert!(
        matches!(
            e,
            FormatError::UnsupportedVersion {
                found: 3,
                supported: 2
            }
        ),
        "{e:?}"
    );
    let msg = one_line(&e);
    assert!(
        msg.contains("version 3") && msg.contains("reads version 2"),
        "{msg}"
    );
    // A damaged version field is a checksum error, not a version error.
    let mut bad = header(2);
    bad[8] = 3;
    let e = verify(&bad).unwrap_err();
    assert!(
        matches!(e, FormatError::ChecksumMismatch { offset: 0, .. }),
        "{e:?}"
    );
}

#[test]
fn oversized_section_is_refused_before_allocating() {
    for len in [u64::MAX, MAX_SECTION_BYTES + 1, 1 << 40] {
        let bytes = concat(&[cfg(), section_rec(b"vm", len, b"")]);
        let e = verify(&bytes).unwrap_err();
        match &e {
            FormatError::SectionTooLarge {
                offset,
                name,
                len: l,
                ..
            } => {
                assert_eq!(
                    (*offset, name.as_str(), *l),
                    (cfg().len() as u64, "vm", len)
                );
            }
            other => panic!("{other:?}"),
        }
        let msg = one_line(&e);
        assert!(msg.contains("\"vm\"") && msg.contains(&format!("byte {}", cfg().len())));
    }
    // The largest allowed length, with no bytes behind it: truncated.
    let bytes = concat(&[cfg(), section_rec(b"vm", MAX_SECTION_BYTES, b"")]);
    let e = verify(&bytes).unwrap_err();
    assert!(matches!(e, FormatError::Truncated { .. }), "{e:?}");
    assert!(one_line(&e).contains("section \"vm\""));
    // Also the config section.
    let bytes = concat(&[
        header(FORMAT_VERSION),
        section_rec(b"config", u64::MAX, b""),
    ]);
    assert!(matches!(
        verify(&bytes),
        Err(FormatError::SectionTooLarge { .. })
    ));
}

#[test]
fn chunk_outside_ram() {
    let p = PAGE as u64;
    for (gpa, pages) in [(MIB, 1), (MIB - p, 2), (4 * GIB, 1), (u64::MAX - p + 1, 1)] {
        let bytes = concat(&[cfg(), chunk(gpa, pages, 1), end(2, pages as u64 * p)]);
        let e = restore(&bytes).unwrap_err();
        match &e {
            FormatError::ChunkRejected { gpa: g, reason, .. } => {
                assert_eq!(*g, gpa);
                assert!(reason.contains("outside guest RAM"), "{reason}");
                assert!(reason.contains("0x0..0x100000"), "{reason}");
            }
            FormatError::BadChunk { .. } if gpa > u64::MAX - MIB => {}
            other => panic!("{gpa:#x}: {other:?}"),
        }
        let msg = one_line(&e);
        assert!(msg.contains(&format!("{gpa:#x}")), "{msg}");
        // The same stream verifies without RAM to put it in.
        if !matches!(e, FormatError::BadChunk { .. }) {
            verify(&bytes).unwrap();
        }
    }
    // The last page of RAM is inside.
    let bytes = concat(&[cfg(), chunk(MIB - p, 1, 1), end(2, p)]);
    restore(&bytes).unwrap();
}

#[test]
fn misaligned_chunks() {
    let page = vec![1u8; PAGE];
    let cases: Vec<(u64, u32, &[u8], &str)> = vec![
        (0x100, PAGE as u32, &page, "guest address"),
        (0, 100, &page[..100], "multiple of 4096"),
        (0, 0, &[], "empty"),
        (0, PAGE as u32 + 1, &page, "multiple of 4096"),
        (0, 8 << 20, &[], "4 MiB"),
    ];
    for (gpa, len, data, what) in cases {
        let bytes = concat(&[cfg(), chunk_rec(gpa, len, data), end(2, len.into())]);
        let e = verify(&bytes).unwrap_err();
        assert!(matches!(e, FormatError::BadChunk { .. }), "{e:?}");
        let msg = one_line(&e);
        assert!(msg.contains(what), "{msg}");
        assert!(msg.contains(&format!("byte {}", cfg().len())), "{msg}");
    }
}

#[test]
fn section_after_ram() {
    let bytes = concat(&[
        cfg(),
        chunk(0, 1, 1),
        section("late", b"x"),
        end(3, PAGE as u64),
    ]);
    let offset = (cfg().len() + chunk(0, 1, 1).len()) as u64;
    let e = verify(&bytes).unwrap_err();
    match &e {
        FormatError::SectionAfterRam { offset: o, name } => {
            assert_eq!((*o, name.as_str()), (offset, "late"));
        }
        other => panic!("{other:?}"),
    }
    assert!(one_line(&e).contains("\"late\""));

    let mut w = Writer::new(Vec::new(), b"").unwrap();
    w.ram(&two_regions()).unwrap();
    let e = w.section("late", b"").unwrap_err();
    assert!(matches!(e, FormatError::SectionAfterRam { .. }), "{e:?}");
}

#[test]
fn first_record_must_be_config() {
    let cases = [
        (section("vm", b"x"), "section \"vm\""),
        (chunk(0, 1, 1), "a RAM chunk"),
        (end(0, 0), "the end record"),
    ];
    for (first, found) in cases {
        let bytes = concat(&[header(FORMAT_VERSION), first, end(1, 0)]);
        let e = verify(&bytes).unwrap_err();
        match &e {
            FormatError::ConfigNotFirst { offset, found: f } => {
                assert_eq!((*offset, f.as_str()), (HEADER_BYTES as u64, found));
            }
            other => panic!("{other:?}"),
        }
        assert!(one_line(&e).contains("\"config\""));
    }
}

#[test]
fn names_are_checked() {
    let long = [b'a'; 65];
    let cases: [(&[u8], &str); 5] = [
        (b"", "length is 0"),
        (&long, "length is 65"),
        (b"two words", "printable ASCII"),
        (b"tab\t", "printable ASCII"),
        (b"caf\xc3\xa9", "printable ASCII"),
    ];
    for (name, why) in cases {
        let bytes = concat(&[cfg(), section_rec(name, 1, b"x"), end(2, 0)]);
        let e = verify(&bytes).unwrap_err();
        assert!(matches!(e, FormatError::BadName { .. }), "{e:?}");
        assert!(one_line(&e).contains(why), "{e}");
    }
    let mut w = Writer::new(Vec::new(), b"").unwrap();
    for name in ["", "two words", &"a".repeat(65)] {
        let e = w.section(name, b"").unwrap_err();
        assert!(matches!(e, FormatError::BadName { .. }), "{name:?}: {e:?}");
    }
    w.section(&"a".repeat(64), b"").unwrap();
    // The failed calls wrote nothing: the stream is still valid.
    let (out, _) = w.finish().unwrap();
    verify(&out).unwrap();
}

#[test]
fn duplicate_sections() {
    let bytes = concat(&[cfg(), section("vm", b"1"), section("vm", b"2"), end(3, 0)]);
    let e = verify(&bytes).unwrap_err();
    assert!(matches!(e, FormatError::DuplicateSection { .. }), "{e:?}");
    let mut w = Writer::new(Vec::new(), b"").unwrap();
    let dup = |r| matches!(r, Err(FormatError::DuplicateSection { .. }));
    assert!(dup(w.section("config", b"")));
    w.section("vm", b"").unwrap();
    assert!(dup(w.section("vm", b"")));
}

#[test]
fn unknown_tag() {
    let bytes = concat(&[cfg(), with_crc(vec![7, 0, 0])]);
    let e = verify(&bytes).unwrap_err();
    assert!(
        matches!(e, FormatError::UnknownTag { tag: 7, offset } if offset == cfg().len() as u64),
        "{e:?}"
    );
}

#[test]
fn end_counts_must_match() {
    let p = PAGE as u64;
    let good = concat(&[cfg(), chunk(0, 2, 1), end(2, 2 * p)]);
    restore(&good).unwrap();
    for (records, ram, what) in [
        (3, 2 * p, "records"),
        (1, 2 * p, "records"),
        (2, p, "RAM bytes"),
    ] {
        let bytes = concat(&[cfg(), chunk(0, 2, 1), end(records, ram)]);
        let e = verify(&bytes).unwrap_err();
        assert!(matches!(e, FormatError::EndMismatch { .. }), "{e:?}");
        assert!(one_line(&e).contains(what), "{e}");
    }
    // No end record at all.
    let bytes = concat(&[cfg(), chunk(0, 2, 1)]);
    let e = verify(&bytes).unwrap_err();
    assert!(matches!(e, FormatError::Truncated { .. }), "{e:?}");
    assert!(one_line(&e).contains("end record"), "{e}");
}

#[test]
fn checksum_messages_name_the_record() {
    let stream = small_stream();
    // The "vcpu0" section starts after the header, config and "vm".
    let at = HEADER_BYTES
        + section("config", b"{\"cpus\":1}").len()
        + section("vm", &[1, 2, 3, 4, 5]).len();
    let mut bad = stream.clone();
    bad[at + 20] ^= 1; // inside its payload
    let e = verify(&bad).unwrap_err();
    assert!(matches!(e, FormatError::ChecksumMismatch { .. }), "{e:?}");
    let msg = one_line(&e);
    assert!(
        msg.contains("section \"vcpu0\"") && msg.contains(&format!("byte {at}")),
        "{msg}"
    );
    // A RAM chunk's message names its guest address.
    let mut bad = stream.clone();
    let n = bad.len();
    bad[n - 21 - 100] ^= 1; // in the last chunk's data
    let msg = one_line(&verify(&bad).unwrap_err());
    assert!(msg.contains("RAM chunk at guest address 0x5000"), "{msg}");
}

/// An output that fails after `left` bytes.
struct FailAfter {
    left: usize,
}

impl Write for FailAfter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("disk full"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn write_errors_stop_the_writer() {
    let mem = two_regions();
    fill_page(&mem, 0, 1);
    let mut w = Writer::new(FailAfter { left: 100 }, b"").unwrap();
    // Buffered: the failure shows when the buffer is written out.
    w.section("big", &vec![1; 2 << 20]).unwrap_err();
    let e = w.ram(&mem).unwrap_err();
    assert!(matches!(e, FormatError::WriterFailed { .. }), "{e:?}");
    assert!(matches!(w.finish(), Err(FormatError::WriterFailed { .. })));

    let mut w = Writer::new(FailAfter { left: 50 }, b"").unwrap();
    w.section("vm", b"x").unwrap();
    match w.finish() {
        Err(FormatError::Io { source, doing, .. }) => {
            assert_eq!(source.to_string(), "disk full");
            assert!(doing.contains("flushing"), "{doing}");
        }
        other => panic!("{:?}", other.map(|(_, n)| n)),
    }
}

#[test]
fn writer_refuses_oversized_sections() {
    let mut w = Writer::new(Vec::new(), b"").unwrap();
    let big = vec![0u8; MAX_SECTION_BYTES as usize + 1];
    let e = w.section("big", &big).unwrap_err();
    assert!(matches!(e, FormatError::SectionTooLarge { .. }), "{e:?}");
    let (out, _) = w.finish().unwrap();
    verify(&out).unwrap();
}
