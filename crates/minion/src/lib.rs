//! The dispatch minion daemon.

pub mod cli;
