//! The dispatch master daemon and operator CLI.

pub mod cli;
