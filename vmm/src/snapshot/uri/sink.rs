//! A snapshot destination: a file replaced whole on commit, or a command's
//! standard input.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{debug, warn};

use super::exec::{Direction, Exec};
use super::{StreamUri, UriError};

/// Tells apart the temporary files of one process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Where a snapshot stream is written. Nothing is final before
/// [`Sink::commit`]: dropped uncommitted, a `file:` sink removes its
/// temporary file (PATH is untouched) and an `exec:` sink kills its command.
pub struct Sink {
    kind: Kind,
}

enum Kind {
    File {
        /// `None` once committed.
        file: Option<File>,
        tmp: PathBuf,
        dest: PathBuf,
    },
    Exec {
        /// `None` once closed.
        stdin: Option<ChildStdin>,
        exec: Option<Exec>,
    },
}

impl Sink {
    /// `file:PATH`: creates a temporary file `.NAME.tmp-PID-N` beside PATH
    /// (mode 0600: it holds guest memory). `exec:CMD`: starts `/bin/sh -c CMD`
    /// with its standard input a pipe.
    pub fn open(uri: &StreamUri) -> Result<Sink, UriError> {
        let kind = match uri {
            StreamUri::File(dest) => open_tmp(dest)?,
            StreamUri::Exec(cmd) => {
                let (exec, stdin, _) = Exec::spawn(cmd, Direction::ToCommand)?;
                Kind::Exec {
                    stdin,
                    exec: Some(exec),
                }
            }
        };
        Ok(Sink { kind })
    }

    /// Makes the stream final. `file:` fsyncs the temporary file, renames it
    /// over PATH and fsyncs the directory. `exec:` closes the command's
    /// standard input and waits for it: a non-zero status is an error.
    pub fn commit(mut self) -> Result<(), UriError> {
        match &mut self.kind {
            Kind::File { file, tmp, dest } => {
                let Some(file) = file.take() else {
                    return Ok(());
                };
                let result = commit_file(file, tmp, dest);
                if result.is_err() {
                    let _ = fs::remove_file(&*tmp);
                }
                result
            }
            Kind::Exec { stdin, exec } => {
                drop(stdin.take());
                match exec.take() {
                    Some(exec) => exec.wait(),
                    None => Ok(()),
                }
            }
        }
    }
}

fn open_tmp(dest: &Path) -> Result<Kind, UriError> {
    let bad = |problem: &str| UriError::Destination {
        path: dest.to_path_buf(),
        problem: problem.to_string(),
    };
    let name = dest
        .file_name()
        .ok_or_else(|| bad("does not name a file"))?;
    if dest.is_dir() {
        return Err(bad("is a directory; name a file"));
    }
    let dir = dir_of(dest);
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|source| UriError::Create {
            path: dest.to_path_buf(),
            tmp: tmp.clone(),
            source,
        })?;
    debug!("snapshot: writing {} for {}", tmp.display(), dest.display());
    Ok(Kind::File {
        file: Some(file),
        tmp,
        dest: dest.to_path_buf(),
    })
}

/// The directory holding `path` ("." for a bare name).
pub(crate) fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn commit_file(file: File, tmp: &Path, dest: &Path) -> Result<(), UriError> {
    let failed = |op: String| {
        let dest = dest.to_path_buf();
        move |source| UriError::Commit {
            path: dest,
            op,
            source,
        }
    };
    file.sync_all()
        .map_err(failed(format!("fsync of {}", tmp.display())))?;
    drop(file);
    fs::rename(tmp, dest).map_err(failed(format!("rename from {}", tmp.display())))?;
    let dir = dir_of(dest);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed(format!("fsync of directory {}", dir.display())))?;
    debug!("snapshot: committed {}", dest.display());
    Ok(())
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.kind {
            Kind::File { file: Some(f), .. } => f.write(buf),
            Kind::Exec {
                stdin: Some(stdin),
                exec,
            } => stdin.write(buf).map_err(|e| explain(e, exec.as_mut())),
            _ => Err(io::Error::other(
                "the snapshot destination is already closed",
            )),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.kind {
            Kind::File { file: Some(f), .. } => f.flush(),
            Kind::Exec {
                stdin: Some(stdin),
                exec,
            } => stdin.flush().map_err(|e| explain(e, exec.as_mut())),
            _ => Ok(()),
        }
    }
}

/// A write to a command that failed (typically a broken pipe because the
/// command exited): adds what the command said and how it exited.
fn explain(e: io::Error, exec: Option<&mut Exec>) -> io::Error {
    let Some(exec) = exec else {
        return e;
    };
    let status = match exec.try_status() {
        Some(status) => format!("; `{}` exited with {status}", exec.cmd()),
        None => format!("; `{}` stopped reading", exec.cmd()),
    };
    io::Error::new(e.kind(), format!("{e}{status}{}", exec.stderr_note()))
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Kind::File {
            file: Some(_), tmp, ..
        } = &self.kind
        {
            warn!(
                "snapshot: removing {}: the snapshot was not completed",
                tmp.display()
            );
            let _ = fs::remove_file(tmp);
        }
        // An uncommitted Exec kills its command when dropped.
    }
}
