//! Where a snapshot stream goes to or comes from, named the way QEMU names
//! migration targets: `file:PATH` or `exec:COMMAND`.
//!
//! - `file:PATH`: a [`Sink`] writes a temporary file next to PATH and
//!   renames it over PATH only on [`Sink::commit`], so PATH holds either the
//!   old content or the whole new snapshot. A [`Source`] reads the file.
//! - `exec:COMMAND`: runs `/bin/sh -c COMMAND`. A [`Sink`] writes the stream
//!   to its standard input (`exec:cat>PATH`, `exec:gzip>PATH.gz`), a
//!   [`Source`] reads it from its standard output (`exec:cat PATH`), as
//!   QEMU's `migrate exec:` and `-incoming exec:` do. The unused direction is
//!   `/dev/null`; standard error is logged and quoted when the command fails.
//!   The command runs in its own process group, killed whole if the stream
//!   is abandoned (a `Sink` dropped uncommitted, a `Source` dropped unfinished).

mod exec;
mod sink;
mod source;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use thiserror::Error;

pub(crate) use sink::dir_of;
pub use sink::Sink;
pub use source::Source;

/// The schemes this build supports, for error messages.
pub const SUPPORTED: &str = "file:PATH, exec:COMMAND";

/// Where a snapshot stream goes to or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamUri {
    File(PathBuf),
    Exec(String),
}

impl StreamUri {
    /// Parses `file:PATH` or `exec:COMMAND` (both non-empty).
    pub fn parse(s: &str) -> Result<Self, UriError> {
        if s.is_empty() {
            return Err(UriError::Empty);
        }
        let Some((scheme, rest)) = s.split_once(':') else {
            return Err(UriError::NoScheme { uri: s.to_string() });
        };
        match scheme {
            "file" => {
                if rest.is_empty() {
                    return Err(UriError::EmptyTarget {
                        uri: s.to_string(),
                        what: "the path",
                        example: "file:/path/to/snapshot",
                    });
                }
                // QEMU reads "file:PATH,offset=N"; a snapshot always starts at byte 0.
                if rest
                    .split(',')
                    .skip(1)
                    .any(|opt| opt.starts_with("offset="))
                {
                    return Err(UriError::Offset { uri: s.to_string() });
                }
                Ok(StreamUri::File(PathBuf::from(rest)))
            }
            "exec" => {
                if rest.trim().is_empty() {
                    return Err(UriError::EmptyTarget {
                        uri: s.to_string(),
                        what: "the command",
                        example: "exec:cat>/path/to/snapshot",
                    });
                }
                Ok(StreamUri::Exec(rest.to_string()))
            }
            _ => Err(UriError::Unsupported {
                uri: s.to_string(),
                scheme: scheme.to_string(),
            }),
        }
    }
}

impl fmt::Display for StreamUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamUri::File(path) => write!(f, "file:{}", path.display()),
            StreamUri::Exec(cmd) => write!(f, "exec:{cmd}"),
        }
    }
}

impl std::str::FromStr for StreamUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StreamUri::parse(s)
    }
}

/// An error parsing a snapshot URI, or opening, writing, committing or
/// finishing its stream.
#[derive(Debug, Error)]
pub enum UriError {
    #[error("empty snapshot URI; supported: {SUPPORTED}")]
    Empty,
    #[error("snapshot URI {uri:?} has no scheme; supported: {SUPPORTED}")]
    NoScheme { uri: String },
    #[error("snapshot URI {uri:?}: scheme \"{scheme}:\" is not supported; supported: {SUPPORTED}")]
    Unsupported { uri: String, scheme: String },
    #[error("snapshot URI {uri:?}: {what} is empty; for example {example}")]
    EmptyTarget {
        uri: String,
        what: &'static str,
        example: &'static str,
    },
    #[error(
        "snapshot URI {uri:?}: \",offset=\" is not supported: a snapshot always starts at byte 0 \
         of its file; drop the \",offset=...\" part"
    )]
    Offset { uri: String },
    #[error("snapshot destination {}: {problem}", .path.display())]
    Destination { path: PathBuf, problem: String },
    #[error("cannot create the temporary file {} for snapshot {}: {source}", .tmp.display(), .path.display())]
    Create {
        path: PathBuf,
        tmp: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open snapshot {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot commit snapshot {}: {op} failed: {source}", .path.display())]
    Commit {
        path: PathBuf,
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot run `{cmd}` (exec:) with /bin/sh: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    #[error("waiting for `{cmd}` (exec:): {source}")]
    Wait {
        cmd: String,
        #[source]
        source: io::Error,
    },
    #[error("command `{cmd}` (exec:) failed: {status}{stderr}")]
    Failed {
        cmd: String,
        status: ExitStatus,
        /// Empty, or "; its standard error ends with: ...".
        stderr: String,
    },
}
