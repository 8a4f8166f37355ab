//! VM templates: one VM is booted, paused and saved once (`template
//! create`), and many clones start from it (`template clone`). A template's
//! files are never written after creation: clones map its memory privately
//! and each gets its own copy of every captured disk.
//!
//! This module holds the file-level building blocks: copying a file
//! without ever overwriting or writing the source ([`copy`]), and the
//! advisory locks that keep creation, cloning and destruction apart
//! ([`lock`]).

pub mod copy;
pub mod lock;
