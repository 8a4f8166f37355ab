//! Backings on real files and memfds: what the guest writes, where it goes,
//! and what discard does.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use vm_memory::{Bytes, GuestAddress};

use super::*;

const MIB: u64 = 1 << 20;

struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ram-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_file(&p);
        TempFile(p)
    }
    fn with_content(tag: &str, content: &[u8]) -> Self {
        let t = Self::new(tag);
        fs::write(&t.0, content).unwrap();
        t
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn map(spec: &BackingSpec, size: u64) -> Result<GuestRam, GuestRamError> {
    let mut b = GuestRam::builder();
    b.add(
        "--memory",
        spec,
        RegionRole::Boot,
        &[(GuestAddress(0), size)],
    )?;
    b.build()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn hash(data: &[u8]) -> u64 {
    // FNV-1a: enough to tell two file contents apart in a test.
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn read(ram: &GuestRam, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ram.memory().read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[test]
fn anonymous_discard_reads_back_zero() {
    let ram = map(&BackingSpec::anonymous(), 4 * MIB).unwrap();
    ram.memory()
        .write_slice(&pattern(8192, 1), GuestAddress(4096))
        .unwrap();
    ram.discard(GuestAddress(4096), 4096).unwrap();
    assert_eq!(read(&ram, 4096, 4096), vec![0; 4096]);
    // The page after the discarded one keeps its content.
    assert_eq!(read(&ram, 8192, 4096), pattern(8192, 1)[4096..]);
}

#[test]
fn memfd_shared_discard_punches_the_fd() {
    let ram = map(&BackingSpec::memfd(true), 4 * MIB).unwrap();
    let region = &ram.regions()[0];
    let fd = region
        .shared_fd()
        .expect("memfd share=on is shareable")
        .clone();
    ram.memory()
        .write_slice(&pattern(4096, 2), GuestAddress(MIB))
        .unwrap();
    // The write went to the memfd: another mapping of it sees it.
    let mut buf = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_at(&*fd, &mut buf, MIB).unwrap();
    assert_eq!(buf, pattern(4096, 2));
    ram.discard(GuestAddress(MIB), 4096).unwrap();
    assert_eq!(read(&ram, MIB, 4096), vec![0; 4096]);
    std::os::unix::fs::FileExt::read_at(&*fd, &mut buf, MIB).unwrap();
    assert_eq!(
        buf,
        vec![0; 4096],
        "the hole is in the fd, not only in this mapping"
    );
}

#[test]
fn memfd_private_is_not_shareable_but_discards() {
    let ram = map(&BackingSpec::memfd(false), 2 * MIB).unwrap();
    assert!(ram.regions()[0].shared_fd().is_none());
    ram.memory()
        .write_slice(&pattern(4096, 3), GuestAddress(0))
        .unwrap();
    // Reading a private memfd mapping allocates pages in the memfd itself.
    assert_eq!(read(&ram, 65536, 65536), vec![0; 65536]);
    let fd = ram.regions()[0].file.as_ref().unwrap().clone();
    let blocks = || std::os::unix::fs::MetadataExt::blocks(&fd.metadata().unwrap());
    let before = blocks();
    ram.discard(GuestAddress(0), 4096).unwrap();
    ram.discard(GuestAddress(65536), 65536).unwrap();
    assert_eq!(read(&ram, 0, 4096), vec![0; 4096]);
    assert!(
        before > 0 && blocks() < before,
        "the memfd gave its pages back: {before} -> {}",
        blocks()
    );
}

#[test]
fn shared_file_receives_writes_and_discard_punches_it() {
    let f = TempFile::new("shared");
    let ram = map(&BackingSpec::file(&f.0, true), 2 * MIB).unwrap();
    assert_eq!(
        fs::metadata(&f.0).unwrap().len(),
        2 * MIB,
        "file created at RAM size"
    );
    ram.memory()
        .write_slice(&pattern(4096, 4), GuestAddress(8192))
        .unwrap();
    let on_disk = fs::read(&f.0).unwrap();
    assert_eq!(&on_disk[8192..12288], &pattern(4096, 4)[..]);
    ram.discard(GuestAddress(8192), 4096).unwrap();
    assert_eq!(read(&ram, 8192, 4096), vec![0; 4096]);
    assert_eq!(&fs::read(&f.0).unwrap()[8192..12288], &[0u8; 4096][..]);
}

#[test]
fn shared_file_shorter_than_ram_is_grown() {
    let f = TempFile::with_content("grow", &pattern(4096, 5));
    let ram = map(&BackingSpec::file(&f.0, true), MIB).unwrap();
    assert_eq!(fs::metadata(&f.0).unwrap().len(), MIB);
    assert_eq!(
        read(&ram, 0, 4096),
        pattern(4096, 5),
        "existing content kept"
    );
}

#[test]
fn private_file_writes_never_reach_the_file() {
    let content = pattern(2 * MIB as usize, 6);
    let f = TempFile::with_content("private", &content);
    let before = hash(&fs::read(&f.0).unwrap());
    let ram = map(&BackingSpec::file(&f.0, false), 2 * MIB).unwrap();
    assert_eq!(read(&ram, 0, 4096), content[..4096], "guest sees the file");
    ram.memory()
        .write_slice(&[0xAA; 8192], GuestAddress(4096))
        .unwrap();
    assert_eq!(read(&ram, 4096, 8192), vec![0xAA; 8192]);
    drop(ram);
    assert_eq!(hash(&fs::read(&f.0).unwrap()), before);
}

#[test]
fn readonly_clone_writes_stay_private_and_file_is_opened_read_only() {
    let content = pattern(4 * MIB as usize, 7);
    let f = TempFile::with_content("template", &content);
    let before = hash(&fs::read(&f.0).unwrap());
    let mtime = fs::metadata(&f.0).unwrap().modified().unwrap();
    let ram = map(&BackingSpec::template_clone(&f.0), 4 * MIB).unwrap();
    let fd = ram.regions()[0].file.as_ref().unwrap();
    // SAFETY: F_GETFL on a valid fd.
    let flags = unsafe { libc::fcntl(std::os::unix::io::AsRawFd::as_raw_fd(&**fd), libc::F_GETFL) };
    assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
    assert_eq!(
        read(&ram, 3 * MIB, 4096),
        content[3 * MIB as usize..][..4096]
    );
    for off in (0..4 * MIB).step_by(64 * 1024) {
        ram.memory()
            .write_obj(0xdead_beef_u32, GuestAddress(off))
            .unwrap();
    }
    assert_eq!(
        ram.memory().read_obj::<u32>(GuestAddress(MIB)).unwrap(),
        0xdead_beef
    );
    drop(ram);
    assert_eq!(hash(&fs::read(&f.0).unwrap()), before);
    assert_eq!(fs::metadata(&f.0).unwrap().modified().unwrap(), mtime);
}

#[test]
fn private_file_discard_is_refused_and_changes_nothing() {
    let content = pattern(MIB as usize, 8);
    let f = TempFile::with_content("nodiscard", &content);
    for spec in [
        BackingSpec::file(&f.0, false),
        BackingSpec::template_clone(&f.0),
    ] {
        let ram = map(&spec, MIB).unwrap();
        ram.memory()
            .write_slice(&[1u8; 4096], GuestAddress(0))
            .unwrap();
        let err = ram.discard(GuestAddress(0), 4096).unwrap_err();
        assert!(
            matches!(err, DiscardError::PrivateFileBacked { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("file's content again") && msg.contains("share=on"),
            "{msg}"
        );
        assert_eq!(
            read(&ram, 0, 4096),
            vec![1u8; 4096],
            "the guest's page is untouched"
        );
    }
    assert_eq!(fs::read(&f.0).unwrap(), content);
}

#[test]
fn readonly_file_shorter_than_ram_is_refused() {
    let f = TempFile::with_content("short", &pattern(MIB as usize, 9));
    let err = map(&BackingSpec::template_clone(&f.0), 2 * MIB).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, GuestRamError::FileTooShort { .. }), "{msg}");
    assert!(
        msg.contains("1048576 bytes") && msg.contains("2097152"),
        "{msg}"
    );
    assert_eq!(fs::metadata(&f.0).unwrap().len(), MIB, "not grown");
}

#[test]
fn private_writable_file_shorter_than_ram_is_refused_not_grown() {
    let f = TempFile::with_content("short-rw", &pattern(MIB as usize, 10));
    let err = map(&BackingSpec::file(&f.0, false), 2 * MIB).unwrap_err();
    assert!(matches!(err, GuestRamError::FileTooShort { .. }), "{err}");
    assert_eq!(fs::metadata(&f.0).unwrap().len(), MIB);
}

#[test]
fn readonly_missing_file_is_a_clear_error() {
    let f = TempFile::new("missing");
    let msg = map(&BackingSpec::template_clone(&f.0), MIB)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&f.0.display().to_string()) && msg.contains("template"),
        "{msg}"
    );
    assert!(!f.0.exists(), "a read-only backing never creates the file");
}

#[test]
fn rom_is_refused_for_ram() {
    let f = TempFile::with_content("rom", &pattern(MIB as usize, 11));
    let mut spec = BackingSpec::template_clone(&f.0);
    spec.rom = RomMode::On;
    let msg = map(&spec, MIB).unwrap_err().to_string();
    assert!(
        msg.contains("rom=on") && msg.contains("use rom=off"),
        "{msg}"
    );
    spec.rom = RomMode::Auto;
    let msg = map(&spec, MIB).unwrap_err().to_string();
    assert!(
        msg.contains("readonly=on with rom=auto") && msg.contains("add rom=off"),
        "{msg}"
    );
}

#[test]
fn invalid_combinations_are_refused() {
    let f = TempFile::new("combo");
    let mut spec = BackingSpec::file(&f.0, true);
    spec.readonly = true;
    spec.rom = RomMode::Off;
    assert!(map(&spec, MIB)
        .unwrap_err()
        .to_string()
        .contains("readonly=on with share=on"));
    let mut anon = BackingSpec::anonymous();
    anon.share = true;
    assert!(map(&anon, MIB)
        .unwrap_err()
        .to_string()
        .contains("backing=memfd,share=on"));
    let mut memfd = BackingSpec::memfd(true);
    memfd.readonly = true;
    assert!(map(&memfd, MIB).is_err());
    assert!(!f.0.exists());
}

#[test]
fn hugepages_without_host_pages_is_a_clear_error() {
    let free = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("HugePages_Free:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let mut spec = BackingSpec::anonymous();
    spec.hugepages = true;
    // Ask for more huge pages than the host has free, whatever it has.
    let size = (free + 1) * (2 * MIB);
    let msg = map(&spec, size).unwrap_err().to_string();
    assert!(
        msg.contains("hugepages=on needs") && msg.contains("nr_hugepages"),
        "{msg}"
    );
}

#[test]
fn split_ranges_take_consecutive_file_offsets() {
    let f = TempFile::new("split");
    let mut b = GuestRam::builder();
    b.add(
        "--memory",
        &BackingSpec::file(&f.0, true),
        RegionRole::Boot,
        &[(GuestAddress(0), MIB), (GuestAddress(16 * MIB), MIB)],
    )
    .unwrap();
    let ram = b.build().unwrap();
    ram.memory()
        .write_obj(0x1234_5678u32, GuestAddress(16 * MIB))
        .unwrap();
    let disk = fs::read(&f.0).unwrap();
    assert_eq!(disk.len() as u64, 2 * MIB);
    assert_eq!(&disk[MIB as usize..][..4], &0x1234_5678u32.to_le_bytes());
    assert_eq!(ram.size_of(&RegionRole::Boot), 2 * MIB);
    // A discard may not cross regions.
    assert!(matches!(
        ram.discard(GuestAddress(MIB - 4096), 8192),
        Err(DiscardError::OutOfRange { .. })
    ));
}

#[test]
fn discard_checks_alignment_and_range() {
    let ram = map(&BackingSpec::anonymous(), MIB).unwrap();
    assert!(matches!(
        ram.discard(GuestAddress(100), 4096),
        Err(DiscardError::Unaligned { .. })
    ));
    assert!(matches!(
        ram.discard(GuestAddress(MIB), 4096),
        Err(DiscardError::OutOfRange { .. })
    ));
    assert!(matches!(
        ram.discard(GuestAddress(u64::MAX - 4095), 4096),
        Err(DiscardError::OutOfRange { .. })
    ));
}

#[test]
fn every_region_starts_on_a_huge_page_boundary_in_the_host() {
    use vm_memory::GuestMemoryBackend;
    let f = TempFile::with_content("aligned", &pattern(6 * MIB as usize, 3));
    let specs = [
        BackingSpec::anonymous(),
        BackingSpec::memfd(true),
        BackingSpec::file(&f.0, false),
    ];
    for spec in &specs {
        let mut b = GuestRam::builder();
        // Two ranges, as boot RAM split around the MMIO hole is.
        b.add(
            "--memory",
            spec,
            RegionRole::Boot,
            &[(GuestAddress(0), 4 * MIB), (GuestAddress(1 << 32), 2 * MIB)],
        )
        .unwrap();
        let ram = b.build().unwrap();
        for r in ram.memory().iter() {
            assert_eq!(r.as_ptr() as usize % (2 * MIB as usize), 0, "{spec}");
        }
        if matches!(spec.kind, BackingKind::File(_)) {
            // The second range maps the file from the first range's end.
            assert_eq!(
                read(&ram, 1 << 32, 4096),
                pattern(6 * MIB as usize, 3)[4 * MIB as usize..][..4096]
            );
        }
        ram.memory()
            .write_slice(&[1; 4096], GuestAddress((1 << 32) + MIB))
            .unwrap();
        assert_eq!(read(&ram, (1 << 32) + MIB, 4096), vec![1; 4096]);
    }
}

#[test]
fn memory_cloned_from_guest_ram_outlives_it() {
    // What vhost-user code does: keep a clone of the memory (in a
    // GuestMemoryAtomic) while the GuestRam it came from goes away.
    let ram = map(&BackingSpec::memfd(true), 4 * MIB).unwrap();
    let data = pattern(4096, 7);
    ram.memory()
        .write_slice(&data, GuestAddress(3 * MIB))
        .unwrap();
    let memory = ram.memory().clone();
    drop(ram);
    let mut back = vec![0u8; data.len()];
    memory.read_slice(&mut back, GuestAddress(3 * MIB)).unwrap();
    assert_eq!(
        back, data,
        "the clone must still see the pages the RAM held"
    );
    memory
        .write_slice(&pattern(4096, 9), GuestAddress(0))
        .unwrap();
}
