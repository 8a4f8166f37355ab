//! SIGTERM and SIGINT end the run as QMP `quit` does (QEMU's behaviour:
//! SHUTDOWN with reason "host-signal", exit status 0), so that a clone
//! killed by its supervisor still releases its template lock and removes
//! its disk copies, and a template being made leaves nothing behind.
//!
//! The signals are blocked in every thread (the mask is inherited by the
//! threads made after it) and taken by one thread with sigwait, so no
//! handler runs at an arbitrary point.

use std::sync::Arc;
use std::thread;

use log::{info, warn};
use serde_json::json;

use super::{Controller, RunEnd};

const SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset fill a sigset_t we own.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        for sig in SIGNALS {
            libc::sigaddset(&mut s, sig);
        }
        s
    }
}

/// Blocks SIGTERM and SIGINT in this thread (and the threads it makes
/// from now on) and starts the thread that waits for them.
pub fn watch(ctl: &Arc<Controller>) {
    let s = set();
    // SAFETY: changes this thread's signal mask only.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut()) };
    if r != 0 {
        warn!(
            "cannot block SIGTERM/SIGINT ({}); they will end the process without a clean shutdown",
            std::io::Error::from_raw_os_error(r)
        );
        return;
    }
    let me = ctl.clone();
    let spawned = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let s = set();
            let mut sig: libc::c_int = 0;
            // SAFETY: waits for one of the blocked signals in `s`.
            while unsafe { libc::sigwait(&s, &mut sig) } != 0 {}
            let name = if sig == libc::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            info!("{name}: ending the VM");
            me.emit_last(
                "SHUTDOWN",
                Some(json!({"guest": false, "reason": "host-signal"})),
            );
            me.finish(RunEnd::Signal(name));
        });
    if let Err(e) = spawned {
        warn!("cannot start the signal thread ({e}); SIGTERM/SIGINT stay blocked");
    }
}
