//! Facts and types shared by every dispatch crate, one place for each:
//!
//! - [`names`]: the id/group grammar and the AMQP topology names;
//! - [`keys`]: ed25519 key files and fingerprints;
//! - [`envelope`]: the signed envelope and its signature domains;
//! - [`message`]: commands and replies; [`rpc`]: the master's request/response API;
//! - [`target`]: the target grammar and matching;
//! - [`sasl`]: the `DISPATCH-ED25519` broker authentication; [`client`]: connecting;
//! - [`durable`]: small files replaced whole and durably.

pub mod client;
pub mod durable;
pub mod envelope;
pub mod keys;
pub mod message;
pub mod names;
pub mod rpc;
pub mod sasl;
pub mod signals;
pub mod target;

/// The product name announced in AMQP server and client properties.
pub const PRODUCT: &str = "dispatch";

/// The crate version, announced by every daemon.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The address the standalone broker binds when `--listen` is not given.
pub const DEFAULT_BROKER_LISTEN: &str = "127.0.0.1:5672";

/// The master's broker when `--master` is not given (the CLI's and the minion's): the
/// embedded broker of a master on this host.
pub const DEFAULT_MASTER_URL: &str = "amqp://127.0.0.1:5672";

/// The line a daemon prints on standard output once its listener is bound, followed by
/// the bound address. Tests and scripts that start a daemon on port 0 read it back.
pub const READY_LINE_PREFIX: &str = "listening on ";
