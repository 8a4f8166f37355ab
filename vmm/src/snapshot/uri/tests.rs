//! Tests of snapshot URIs, with real files in a temporary directory and
//! real `/bin/sh` commands.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::snapshot::format::{FormatError, GuestRamSink, Reader, Writer};

/// A fresh directory, removed with everything in it when dropped.
struct TmpDir(PathBuf);

impl TmpDir {
    fn new(name: &str) -> TmpDir {
        let dir = std::env::temp_dir().join(format!("vmm-snapuri-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TmpDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The names in the directory, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn uri(s: &str) -> StreamUri {
    StreamUri::parse(s).unwrap()
}

/// A memory with a few non-zero pages, and a stream of it.
fn guest() -> GuestMemoryMmap {
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    mem.write_slice(b"hello guest", GuestAddress(0x3000))
        .unwrap();
    mem.write_slice(&[7; 5000], GuestAddress(0x8000)).unwrap();
    mem
}

fn save<W: Write>(out: W) -> Result<(W, u64), FormatError> {
    let mut w = Writer::new(out, b"{\"cfg\":1}")?;
    w.section("vm", b"vm state")?;
    w.ram(&guest())?;
    w.finish()
}

/// Restores a stream into a fresh memory and checks it against `guest()`.
fn check_restore<R: Read>(input: R) {
    let mut r = Reader::new(input).unwrap();
    assert_eq!(r.config(), b"{\"cfg\":1}");
    assert_eq!(
        r.sections().unwrap(),
        vec![("vm".into(), b"vm state".to_vec())]
    );
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    r.ram_and_end(&mut GuestRamSink(&mem)).unwrap();
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    mem.read_slice(&mut a, GuestAddress(0)).unwrap();
    guest().read_slice(&mut b, GuestAddress(0)).unwrap();
    assert!(a == b, "restored RAM differs");
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display())
}

#[test]
fn parse_and_display() {
    assert_eq!(uri("file:/tmp/x"), StreamUri::File("/tmp/x".into()));
    assert_eq!(uri("file:rel/x,y"), StreamUri::File("rel/x,y".into()));
    assert_eq!(uri("exec:cat>/tmp/x"), StreamUri::Exec("cat>/tmp/x".into()));
    assert_eq!(uri("exec:cat /a:b"), StreamUri::Exec("cat /a:b".into()));
    for s in ["file:/tmp/x", "exec:gzip -c > /tmp/x.gz"] {
        assert_eq!(uri(s).to_string(), s);
        assert_eq!(s.parse::<StreamUri>().unwrap(), uri(s));
    }
}

#[test]
fn parse_errors() {
    let cases = [
        ("", "empty"),
        ("tcp:127.0.0.1:4444", "\"tcp:\" is not supported"),
        ("unix:/run/mig.sock", "\"unix:\" is not supported"),
        ("fd:3", "\"fd:\" is not supported"),
        ("/tmp/snap", "no scheme"),
        ("file:", "the path is empty"),
        ("exec:", "the command is empty"),
        ("exec:   ", "the command is empty"),
        ("file:/tmp/x,offset=4096", ",offset="),
    ];
    for (s, why) in cases {
        let e = StreamUri::parse(s).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(why), "{s:?}: {msg}");
        assert!(msg.contains(&format!("{s:?}")) || s.is_empty(), "{msg}");
        if !matches!(e, UriError::EmptyTarget { .. } | UriError::Offset { .. }) {
            assert!(msg.contains("file:PATH, exec:COMMAND"), "{msg}");
        }
    }
}

#[test]
fn file_commit_replaces_the_destination_whole() {
    let dir = TmpDir::new("commit");
    let dest = dir.path("snap");
    fs::write(&dest, "old").unwrap();
    let mut sink = Sink::open(&uri(&format!("file:{}", dest.display()))).unwrap();
    sink.write_all(b"new content").unwrap();
    // Before commit: the old content, and one temporary file beside it.
    assert_eq!(fs::read(&dest).unwrap(), b"old");
    let names = dir.names();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with(".snap.tmp-"), "{names:?}");
    sink.commit().unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"new content");
    assert_eq!(dir.names(), ["snap"]);
    let mode = fs::metadata(&dest).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn file_dropped_uncommitted_leaves_nothing() {
    let dir = TmpDir::new("drop");
    let dest = dir.path("snap");
    fs::write(&dest, "old").unwrap();
    let sink = Sink::open(&StreamUri::File(dest.clone())).unwrap();
    drop(sink);
    assert_eq!(fs::read(&dest).unwrap(), b"old");
    assert_eq!(dir.names(), ["snap"]);

    // A save that fails midway, after megabytes reached the temporary file.
    let sink = Sink::open(&StreamUri::File(dest.clone())).unwrap();
    let mut w = Writer::new(sink, b"cfg").unwrap();
    w.section("big", &vec![1; 3 << 20]).unwrap();
    assert!(w.section("bad name", b"").is_err());
    drop(w);
    assert_eq!(fs::read(&dest).unwrap(), b"old");
    assert_eq!(dir.names(), ["snap"]);

    // Nothing was there before: nothing is there after.
    let fresh = dir.path("fresh");
    drop(Sink::open(&StreamUri::File(fresh.clone())).unwrap());
    assert!(!fresh.exists());
    assert_eq!(dir.names(), ["snap"]);
}

#[test]
fn file_round_trip() {
    let dir = TmpDir::new("file-rt");
    let u = StreamUri::File(dir.path("snap"));
    let (sink, len) = save(Sink::open(&u).unwrap()).unwrap();
    sink.commit().unwrap();
    let saved = fs::read(dir.path("snap")).unwrap();
    assert_eq!(saved.len() as u64, len);
    assert_eq!(saved, save(Vec::new()).unwrap().0);
    let mut src = Source::open(&u).unwrap();
    check_restore(&mut src);
    src.finish().unwrap();
}

#[test]
fn file_errors_name_the_path() {
    let dir = TmpDir::new("file-errors");
    let missing = dir.path("missing");
    let e = Source::open(&StreamUri::File(missing.clone()))
        .err()
        .unwrap();
    assert!(matches!(e, UriError::Open { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );

    let e = Sink::open(&StreamUri::File(dir.0.clone())).err().unwrap();
    assert!(e.to_string().contains("is a directory"), "{e}");

    let nodir = dir.path("no/such/dir/snap");
    let e = Sink::open(&StreamUri::File(nodir.clone())).err().unwrap();
    assert!(matches!(e, UriError::Create { .. }), "{e:?}");
    assert!(e.to_string().contains(&nodir.display().to_string()), "{e}");
}

#[test]
fn exec_round_trip_like_kata() {
    let dir = TmpDir::new("exec-rt");
    let path = dir.path("snap");
    let save_uri = uri(&format!("exec:cat>{}", sh_quote(&path)));
    let (sink, _) = save(Sink::open(&save_uri).unwrap()).unwrap();
    sink.commit().unwrap();
    assert_eq!(fs::read(&path).unwrap(), save(Vec::new()).unwrap().0);

    let mut src = Source::open(&uri(&format!("exec:cat {}", sh_quote(&path)))).unwrap();
    check_restore(&mut src);
    src.finish().unwrap();
}

#[test]
fn exec_sink_failure_names_command_status_and_stderr() {
    let cmd = "echo oops >&2; cat >/dev/null; exit 3";
    let mut sink = Sink::open(&StreamUri::Exec(cmd.into())).unwrap();
    sink.write_all(&[0; 100_000]).unwrap();
    let e = sink.commit().unwrap_err();
    match &e {
        UriError::Failed { status, .. } => assert_eq!(status.code(), Some(3)),
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(cmd) && msg.contains("oops") && msg.contains('3'),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");

    let e = Sink::open(&uri("exec:/no/such/command"))
        .unwrap()
        .commit()
        .unwrap_err();
    match &e {
        UriError::Failed { status, .. } => assert_eq!(status.code(), Some(127)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn exec_sink_that_stops_reading_is_a_write_error() {
    let sink = Sink::open(&uri("exec:exit 5")).unwrap();
    let mut w = Writer::new(sink, b"").unwrap();
    // More than a pipe holds, so the write must reach the exited command.
    let e = w.section("big", &vec![1; 4 << 20]).unwrap_err();
    match &e {
        FormatError::Io { source, .. } => assert_eq!(source.kind(), ErrorKind::BrokenPipe),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("`exit 5`"), "{e}");
}

#[test]
fn exec_source_failure_and_early_drop() {
    let mut src = Source::open(&uri("exec:printf abc; exit 4")).unwrap();
    let mut got = Vec::new();
    src.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"abc");
    let e = src.finish().unwrap_err();
    assert!(
        matches!(&e, UriError::Failed { status, .. } if status.code() == Some(4)),
        "{e:?}"
    );

    // A source abandoned mid-stream kills an endless command.
    let mut src = Source::open(&uri("exec:yes")).unwrap();
    let mut buf = [0u8; 10];
    src.read_exact(&mut buf).unwrap();
    drop(src);

    // Reading stops early: the command dies of SIGPIPE, which is reported.
    let mut src = Source::open(&uri("exec:yes")).unwrap();
    src.read_exact(&mut buf).unwrap();
    assert!(src.finish().is_err());

    // An abandoned exec sink is killed too, not waited for.
    let mut sink = Sink::open(&uri("exec:sleep 30")).unwrap();
    sink.write_all(b"x").unwrap();
    drop(sink);
}

#[test]
fn exec_source_garbage_is_not_a_snapshot() {
    let mut src = Source::open(&uri("exec:echo this is not a snapshot")).unwrap();
    let e = Reader::new(&mut src).err().unwrap();
    assert!(matches!(e, FormatError::NotASnapshot { .. }), "{e:?}");
}
