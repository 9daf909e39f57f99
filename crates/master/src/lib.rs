//! The dispatch master daemon and the operator CLI (`dispatch`).
//!
//! - [`cli`]: the command line, parsed into a plan, and the exit codes;
//! - [`daemon`]: `dispatch master`, its embedded broker and serving loops;
//! - [`registry`]: the key registry as files; [`authority`]: the registry as the
//!   embedded broker's gatekeeper;
//! - [`topology`]: the exchanges and queues the master owns;
//! - [`rpc`]: the signed request/response API; [`results`]: verifying minion replies;
//! - [`client`]: the CLI's side of the RPC API; [`key_cmd`]: `dispatch key …`;
//! - [`layout`]: the data dir and every default.

pub mod authority;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod key_cmd;
pub mod layout;
pub mod registry;
pub mod results;
pub mod rpc;
pub mod topology;
