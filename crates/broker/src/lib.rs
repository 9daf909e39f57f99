//! The embedded AMQP 0-9-1 broker of dispatch.
//!
//! A small, fast broker that standard AMQP clients can use, embedded in the master and
//! runnable alone as `dispatch-broker`. The modules follow the protocol:
//!
//! - [`server`]: accept loop and shutdown;
//! - [`connection`]: handshake (with PLAIN, AMQPLAIN or `DISPATCH-ED25519` logins),
//!   reading frames, writing through the [`outbox`]; [`coalesce`] lets wake-ups gather
//!   several messages under sustained load, and [`spin`] spares conversations a deep
//!   sleep between their messages;
//! - [`identity`]: the [`KeyAuthority`] that admits key logins and the [`Permissions`]
//!   a connection gets; [`permission`] checks them in every channel handler;
//! - [`sessions`]: open connections by user, so [`Broker::close_connections_of`] can
//!   revoke a user's rights at once;
//! - [`channel`]: per-channel state and the handler of every method;
//! - [`vhost`]: exchanges, queues, consumers and deliveries behind one lock, with
//!   routing in [`exchange`] and queue contents and length limits in [`queue`];
//! - [`store`]: durable topology and persistent messages on disk (group commit);
//!   [`disk_alarm`] blocks publishers before the disk fills;
//! - [`arguments`]: the `x-` queue arguments, validated; [`expiry`]: TTLs, `x-expires`
//!   and the timer task; [`deadletter`]: the dead-lettered copy and its `x-death`;
//! - [`codec`]: frames, the hand-parsed hot path and `amq-protocol` for the rest;
//! - [`config`]: every setting and bound, with defaults.
//!
//! Library entry points: [`Broker::open`] recovers the store, then [`serve`] takes the
//! broker, an already bound listener and a shutdown future.

pub mod arguments;
pub mod broker;
pub mod channel;
pub mod cli;
pub mod coalesce;
pub mod codec;
pub mod config;
pub mod confirm;
pub mod connection;
pub mod deadletter;
pub mod disk_alarm;
pub mod error;
pub mod exchange;
pub mod expiry;
mod fast_map;
pub mod identity;
pub mod message;
pub mod names;
pub mod outbox;
pub mod permission;
mod persistence;
pub mod queue;
pub mod server;
pub mod sessions;
pub mod spin;
pub mod store;
pub mod vhost;

pub use broker::Broker;
pub use config::{BrokerConfig, User};
pub use identity::{KeyAuthority, Permissions};
pub use server::serve;
