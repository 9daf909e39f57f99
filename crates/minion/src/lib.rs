//! The dispatch minion daemon: connect to the master's broker, verify each command,
//! execute it at most once, reply, announce presence.
//!
//! - [`cli`]: command line → validated [`config::Config`], logging, exit codes;
//! - [`config`]: every constant and default; [`config_file`]: `--config FILE` (TOML);
//! - [`connector`]: authentication, the master-key check, reconnect backoff;
//! - [`pin`]: the trusted master key and its pin file;
//! - [`session`]: one connected AMQP session (consume, publish replies and presence);
//! - [`daemon`]: the minion's life across sessions, job slots, shutdown drain;
//! - [`verify`]: the checks a command passes before it runs;
//! - [`journal`]: the fsynced replay guard and record of interrupted jobs;
//! - [`kept`]: results of finished jobs that could not be sent before a stop;
//! - [`exec`]: running one job in its own process group.

pub mod cli;
pub mod config;
pub mod config_file;
pub mod connector;
pub mod daemon;
pub mod exec;
pub mod journal;
pub mod kept;
pub mod pin;
pub mod session;
pub mod verify;
