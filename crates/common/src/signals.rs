//! The stop signals of every dispatch daemon (SIGTERM, and SIGINT for Ctrl-C).
//!
//! The handlers are installed when [`stop_signal`] is called, not when its future is first
//! polled: a daemon calls it before it says it is ready, so a supervisor (or a test) that
//! signals it right after the ready line finds the handlers in place instead of killing
//! it with the default action.

use std::future::Future;
use tokio::signal::unix::{SignalKind, signal};

/// Installs the handlers now; the future completes with the signal's name when one
/// arrives. Must be called within a Tokio runtime.
pub fn stop_signal() -> std::io::Result<impl Future<Output = &'static str>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}
