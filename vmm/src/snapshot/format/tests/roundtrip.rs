//! Writing then reading: what goes in comes out, zero pages stay out.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

/// Records the chunks a restore writes, and passes them on.
struct Recording<'a> {
    inner: GuestRamSink<'a, GuestMemoryMmap>,
    chunks: Vec<(u64, usize)>,
}

impl RamSink for Recording<'_> {
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), String> {
        self.chunks.push((gpa, data.len()));
        self.inner.write(gpa, data)
    }
}

#[test]
fn two_regions_round_trip() {
    let src = two_regions();
    // Region 0: a run of 3 pages, a lone page, the last page.
    for (i, gpa) in [10, 11, 12, 40, 255].iter().enumerate() {
        fill_page(&src, gpa * PAGE as u64, i as u8);
    }
    // Region 1: its first page, and pages whose only non-zero byte is the
    // first or the last.
    fill_page(&src, 4 * GIB, 99);
    src.write_obj(1u8, GuestAddress(4 * GIB + 100 * PAGE as u64))
        .unwrap();
    src.write_obj(2u8, GuestAddress(4 * GIB + 201 * PAGE as u64 - 1))
        .unwrap();

    let sections: Vec<(String, Vec<u8>)> = vec![
        ("vm".into(), b"vm state".to_vec()),
        ("vcpu0".into(), vec![0x11; 3000]),
        ("vcpu1".into(), vec![]),
        ("device:disk0".into(), (0..=255).collect()),
    ];
    let mut w = Writer::new(Vec::new(), b"{\"memory\":\"2M\"}").unwrap();
    for (name, payload) in &sections {
        w.section(name, payload).unwrap();
    }
    let stats = w.ram(&src).unwrap();
    assert_eq!(
        stats,
        RamStats {
            pages_scanned: 512,
            pages_written: 8,
            bytes_written: 8 * PAGE as u64,
        }
    );
    let (stream, len) = w.finish().unwrap();
    assert_eq!(stream.len() as u64, len);
    assert!(len < 2 * MIB / 10, "stream of {len} bytes for 2 MiB of RAM");

    let dst = two_regions();
    let mut r = Reader::new(stream.as_slice()).unwrap();
    assert_eq!(r.version(), FORMAT_VERSION);
    assert_eq!(r.config(), b"{\"memory\":\"2M\"}");
    assert_eq!(r.sections().unwrap(), sections);
    let mut sink = Recording {
        inner: GuestRamSink(&dst),
        chunks: Vec::new(),
    };
    let read = r.ram_and_end(&mut sink).unwrap();
    assert_eq!(dump(&dst), dump(&src));
    let p = PAGE as u64;
    assert_eq!(
        sink.chunks,
        vec![
            (10 * p, 3 * PAGE),
            (40 * p, PAGE),
            (255 * p, PAGE),
            (4 * GIB, PAGE),
            (4 * GIB + 100 * p, PAGE),
            (4 * GIB + 200 * p, PAGE),
        ]
    );
    assert_eq!(
        read,
        ReadStats {
            records: 11,
            sections: 5,
            ram_chunks: 6,
            ram_bytes: stats.bytes_written,
            stream_bytes: len,
        }
    );
}

#[test]
fn long_runs_split_at_4_mib() {
    let mem = new_mem(&[(GuestAddress(0), 9 * MIB as usize)]);
    mem.write_slice(&vec![0xab; 9 * MIB as usize], GuestAddress(0))
        .unwrap();
    let mut w = Writer::new(Vec::new(), b"").unwrap();
    assert_eq!(w.ram(&mem).unwrap().pages_written, 9 * 256);
    let (stream, _) = w.finish().unwrap();
    let dst = new_mem(&[(GuestAddress(0), 9 * MIB as usize)]);
    let mut sink = Recording {
        inner: GuestRamSink(&dst),
        chunks: Vec::new(),
    };
    Reader::new(stream.as_slice())
        .unwrap()
        .ram_and_end(&mut sink)
        .unwrap();
    assert_eq!(
        sink.chunks,
        vec![(0, 4 << 20), (4 * MIB, 4 << 20), (8 * MIB, 1 << 20)]
    );
    assert_eq!(dump(&dst), dump(&mem));
}

#[test]
fn no_ram_and_zero_ram() {
    // No ram() call at all.
    let (stream, _) = Writer::new(Vec::new(), b"c").unwrap().finish().unwrap();
    let stats = verify(&stream).unwrap();
    assert_eq!((stats.records, stats.ram_chunks), (1, 0));

    // All-zero RAM: scanned, nothing written.
    let mem = two_regions();
    let mut w = Writer::new(Vec::new(), b"c").unwrap();
    let ram = w.ram(&mem).unwrap();
    assert_eq!((ram.pages_scanned, ram.pages_written), (512, 0));
    let (stream, len) = w.finish().unwrap();
    assert_eq!(
        len,
        (HEADER_BYTES + section("config", b"c").len() + 21) as u64
    );
    assert_eq!(verify(&stream).unwrap().ram_bytes, 0);
}

#[test]
fn ram_and_end_verifies_sections_not_read() {
    let stream = small_stream();
    let mut sink = DiscardSink::default();
    let stats = Reader::new(stream.as_slice())
        .unwrap()
        .ram_and_end(&mut sink)
        .unwrap();
    assert_eq!((stats.sections, stats.ram_chunks), (3, 2));
    assert_eq!(
        sink,
        DiscardSink {
            chunks: 2,
            bytes: 3 * PAGE as u64
        }
    );
    // A second sections() call, after the first RAM chunk was seen, is empty.
    let mut r = Reader::new(stream.as_slice()).unwrap();
    assert_eq!(r.sections().unwrap().len(), 2);
    assert!(r.sections().unwrap().is_empty());
    r.ram_and_end(&mut DiscardSink::default()).unwrap();
}

/// The case saving must be fast for: 256 MiB of RAM, a few non-zero pages.
/// Nothing is timed here; it shows the stream stays tiny.
#[test]
fn large_sparse_ram() {
    let size = 256 * MIB;
    let mem = new_mem(&[(GuestAddress(0), size as usize)]);
    for gpa in [0, 100 * MIB, size - PAGE as u64] {
        fill_page(&mem, gpa, 3);
    }
    let mut w = Writer::new(Vec::new(), b"").unwrap();
    let stats = w.ram(&mem).unwrap();
    assert_eq!(
        (stats.pages_scanned, stats.pages_written),
        (size / PAGE as u64, 3)
    );
    let (stream, len) = w.finish().unwrap();
    assert!(len < 4 * PAGE as u64);
    let dst = new_mem(&[(GuestAddress(0), size as usize)]);
    Reader::new(stream.as_slice())
        .unwrap()
        .ram_and_end(&mut GuestRamSink(&dst))
        .unwrap();
    let mut page = vec![0u8; PAGE];
    dst.read_slice(&mut page, GuestAddress(100 * MIB)).unwrap();
    assert!(!is_zero(&page));
    dst.read_slice(&mut page, GuestAddress(50 * MIB)).unwrap();
    assert!(is_zero(&page));
}
