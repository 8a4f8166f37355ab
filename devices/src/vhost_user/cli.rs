//! What both daemons' command lines share: logging and how they fail.

use std::process::ExitCode;

/// What a daemon does first: SIGTERM and SIGINT blocked before any thread
/// starts (see [`super::serve::block_stop_signals`]), and logging to stderr
/// at RUST_LOG's level, info by default.
pub fn init() {
    super::serve::block_stop_signals();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

/// Logs `e` as the reason the daemon could not run and returns status 1.
pub fn fail(daemon: &str, e: &dyn std::fmt::Display) -> ExitCode {
    log::error!("{daemon}: {e}");
    ExitCode::FAILURE
}
