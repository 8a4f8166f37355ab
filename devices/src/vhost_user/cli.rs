//! What both daemons' command lines share: logging and how they fail.

use std::process::ExitCode;

/// Logs to stderr at RUST_LOG's level, info by default.
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

/// Logs `e` as the reason the daemon could not run and returns status 1.
pub fn fail(daemon: &str, e: &dyn std::fmt::Display) -> ExitCode {
    log::error!("{daemon}: {e}");
    ExitCode::FAILURE
}
