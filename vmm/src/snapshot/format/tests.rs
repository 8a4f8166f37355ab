//! Tests of the snapshot stream format, and helpers that build streams by
//! hand (valid or not).

mod corruption;
mod errors;
mod roundtrip;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn new_mem(ranges: &[(GuestAddress, usize)]) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(ranges).unwrap()
}

/// Two 1 MiB regions: at 0 and at 4 GiB.
fn two_regions() -> GuestMemoryMmap {
    new_mem(&[
        (GuestAddress(0), MIB as usize),
        (GuestAddress(4 * GIB), MIB as usize),
    ])
}

fn fill_page(mem: &GuestMemoryMmap, gpa: u64, seed: u8) {
    let page: Vec<u8> = (0..PAGE)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    mem.write_slice(&page, GuestAddress(gpa)).unwrap();
}

/// Every byte of `mem`, region by region.
fn dump(mem: &GuestMemoryMmap) -> Vec<u8> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let mut out = Vec::new();
    for r in mem.iter() {
        let mut buf = vec![0u8; r.len() as usize];
        mem.read_slice(&mut buf, r.start_addr()).unwrap();
        out.extend_from_slice(&buf);
    }
    out
}

/// A small but complete stream: config, two sections, two RAM chunks
/// (one of them two pages long), end.
fn small_stream() -> Vec<u8> {
    let mem = new_mem(&[(GuestAddress(0), 8 * PAGE)]);
    mem.write_slice(&[0xaa; 16], GuestAddress(PAGE as u64 + 100))
        .unwrap();
    mem.write_slice(&[0x55; 3], GuestAddress(2 * PAGE as u64))
        .unwrap();
    mem.write_obj(7u8, GuestAddress(6 * PAGE as u64 - 1))
        .unwrap();
    let mut w = Writer::new(Vec::new(), b"{\"cpus\":1}").unwrap();
    w.section("vm", &[1, 2, 3, 4, 5]).unwrap();
    w.section("vcpu0", &[9; 40]).unwrap();
    w.ram(&mem).unwrap();
    let (out, len) = w.finish().unwrap();
    assert_eq!(out.len() as u64, len);
    out
}

/// Reads a whole stream, verifying it, RAM discarded.
fn verify(bytes: &[u8]) -> Result<ReadStats, FormatError> {
    let mut r = Reader::new(bytes)?;
    r.sections()?;
    r.ram_and_end(&mut DiscardSink::default())
}

/// `body` followed by its CRC32C.
fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

fn header(version: u32) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    with_crc(b)
}

/// A section record with a given length field (normally `payload.len()`).
fn section_rec(name: &[u8], len: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![TAG_SECTION];
    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
    b.extend_from_slice(name);
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(payload);
    with_crc(b)
}

fn section(name: &str, payload: &[u8]) -> Vec<u8> {
    section_rec(name.as_bytes(), payload.len() as u64, payload)
}

fn chunk_rec(gpa: u64, len: u32, data: &[u8]) -> Vec<u8> {
    let mut b = vec![TAG_RAM];
    b.extend_from_slice(&gpa.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(data);
    with_crc(b)
}

fn chunk(gpa: u64, pages: usize, byte: u8) -> Vec<u8> {
    let data = vec![byte; pages * PAGE];
    chunk_rec(gpa, data.len() as u32, &data)
}

fn end(records: u64, ram_bytes: u64) -> Vec<u8> {
    let mut b = vec![TAG_END];
    b.extend_from_slice(&records.to_le_bytes());
    b.extend_from_slice(&ram_bytes.to_le_bytes());
    with_crc(b)
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn hand_built_stream_matches_the_writer() {
    let mut w = Writer::new(Vec::new(), b"cfg").unwrap();
    w.section("vm", b"state").unwrap();
    let (out, _) = w.finish().unwrap();
    let expected = concat(&[
        header(FORMAT_VERSION),
        section("config", b"cfg"),
        section("vm", b"state"),
        end(2, 0),
    ]);
    assert_eq!(out, expected);
    assert_eq!(&out[..8], b"VMMSNAP\0");
    assert_eq!(HEADER_BYTES, header(1).len());
}

#[test]
fn zero_check() {
    assert!(is_zero(&[]));
    assert!(is_zero(&[0; PAGE * 3]));
    for at in [0, 1, 15, 16, PAGE - 1, PAGE, 2 * PAGE + 7] {
        let mut b = vec![0u8; 3 * PAGE];
        b[at] = 1;
        assert!(!is_zero(&b), "non-zero byte at {at}");
        assert!(is_zero(&b[..at]));
    }
}
