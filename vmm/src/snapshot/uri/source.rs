//! A snapshot source: a file, or a command's standard output.

use std::fs::File;
use std::io::{self, Read};
use std::process::ChildStdout;

use log::debug;

use super::exec::{Direction, Exec};
use super::{StreamUri, UriError};

/// Where a snapshot stream is read from. Read it through `&mut Source` (a
/// [`Reader`](crate::snapshot::format::Reader) takes its input by value),
/// then call [`Source::finish`]. Dropped before that, an `exec:` source
/// kills its command.
pub struct Source {
    kind: Kind,
}

enum Kind {
    File(File),
    Exec {
        /// `None` once closed.
        stdout: Option<ChildStdout>,
        exec: Option<Exec>,
    },
}

impl Source {
    /// `file:PATH`: opens the file. `exec:CMD`: starts `/bin/sh -c CMD` with
    /// its standard output a pipe.
    pub fn open(uri: &StreamUri) -> Result<Source, UriError> {
        let kind = match uri {
            StreamUri::File(path) => {
                let file = File::open(path).map_err(|source| UriError::Open {
                    path: path.clone(),
                    source,
                })?;
                debug!("snapshot: reading {}", path.display());
                Kind::File(file)
            }
            StreamUri::Exec(cmd) => {
                let (exec, _, stdout) = Exec::spawn(cmd, Direction::FromCommand)?;
                Kind::Exec {
                    stdout,
                    exec: Some(exec),
                }
            }
        };
        Ok(Source { kind })
    }

    /// Ends reading. `exec:` closes the pipe and waits for the command: a
    /// non-zero status (including death by SIGPIPE when the stream was not
    /// read to its end) is an error.
    pub fn finish(mut self) -> Result<(), UriError> {
        match &mut self.kind {
            Kind::File(_) => Ok(()),
            Kind::Exec { stdout, exec } => {
                drop(stdout.take());
                match exec.take() {
                    Some(exec) => exec.wait(),
                    None => Ok(()),
                }
            }
        }
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.kind {
            Kind::File(f) => f.read(buf),
            Kind::Exec {
                stdout: Some(out), ..
            } => out.read(buf),
            Kind::Exec { stdout: None, .. } => Ok(0),
        }
    }
}
