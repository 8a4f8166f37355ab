//! Watching the guest's serial output for a text: how `vmm template
//! create --ready serial=TEXT` learns that the guest reached the point the
//! template is taken at. The output still goes where `--serial` says.

use std::collections::VecDeque;
use std::io::{self, Write};

use super::serial::SerialOut;

/// The text to wait for and what to do once it was printed (called once,
/// on the vCPU thread that wrote its last byte: it must not block).
pub struct SerialWatch {
    pub text: Vec<u8>,
    pub on_match: Box<dyn FnOnce() + Send>,
}

/// A writer that passes every byte on and looks for the text in the stream.
pub struct Watched {
    inner: SerialOut,
    text: Vec<u8>,
    last: VecDeque<u8>,
    on_match: Option<Box<dyn FnOnce() + Send>>,
}

impl Watched {
    pub fn new(inner: SerialOut, watch: SerialWatch) -> Watched {
        Watched {
            inner,
            last: VecDeque::with_capacity(watch.text.len()),
            text: watch.text,
            on_match: Some(watch.on_match),
        }
    }

    fn scan(&mut self, bytes: &[u8]) {
        if self.on_match.is_none() || self.text.is_empty() {
            return;
        }
        for &b in bytes {
            if self.last.len() == self.text.len() {
                self.last.pop_front();
            }
            self.last.push_back(b);
            if self.last.len() == self.text.len() && self.last.iter().eq(self.text.iter()) {
                if let Some(f) = self.on_match.take() {
                    f();
                }
                return;
            }
        }
    }
}

impl Write for Watched {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Whatever happens to the output (a closed pipe), the guest said it.
        let n = match self.inner.write(buf) {
            Ok(n) => n,
            Err(e) => {
                self.scan(buf);
                return Err(e);
            }
        };
        self.scan(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn watched(text: &str) -> (Watched, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let w = Watched::new(
            Box::new(io::sink()),
            SerialWatch {
                text: text.as_bytes().to_vec(),
                on_match: Box::new(move || {
                    h.fetch_add(1, Ordering::SeqCst);
                }),
            },
        );
        (w, hits)
    }

    #[test]
    fn the_text_is_found_across_writes_once() {
        let (mut w, hits) = watched("READY");
        for b in b"boot... REA" {
            w.write_all(&[*b]).unwrap();
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        w.write_all(b"RE").unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 0, "REA then RE is no match");
        w.write_all(b"ADY\nREADY").unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1, "found once, never again");
    }

    #[test]
    fn a_prefix_that_repeats_still_matches() {
        let (mut w, hits) = watched("aab");
        w.write_all(b"aaab").unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
