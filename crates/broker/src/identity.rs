//! Who a connection is and what it may do.
//!
//! A client logs in either with a password (PLAIN, AMQPLAIN; see
//! [`crate::connection::auth`]) or with its ed25519 key (the `DISPATCH-ED25519`
//! mechanism of [`dispatch_common::sasl`]). A key login is decided by the
//! [`KeyAuthority`] the embedder puts in [`crate::BrokerConfig::key_authority`]: the
//! handshake verifies the proof's signature against the challenge it has just sent,
//! then asks the authority whether that key may connect and with which
//! [`Permissions`]. Password users carry their permissions in [`crate::User`].
//!
//! The connection keeps its permissions for its whole life; [`crate::permission`]
//! checks them on every declare, bind, delete, purge, consume, get and publish. To take
//! them away (a key rejected or deleted), the embedder records that where
//! [`KeyAuthority::admit`] looks, then calls [`crate::Broker::close_connections_of`],
//! which closes the user's open connections with 320 CONNECTION_FORCED.

use dispatch_common::keys::PublicKey;
use dispatch_common::sasl::Proof;
use std::fmt;
use std::net::SocketAddr;

/// Decides who may connect with DISPATCH-ED25519. The master implements it with its key
/// registry.
pub trait KeyAuthority: Send + Sync + 'static {
    /// The broker's own public key, sent in every challenge (the embedded broker uses the
    /// master's key).
    fn broker_key(&self) -> PublicKey;

    /// Called with a proof whose signature is already verified against a fresh challenge.
    /// Ok: what the connection may do. Err: the reason, sent with 403 ACCESS_REFUSED.
    ///
    /// Called from a blocking thread (it may do file I/O), once per key login.
    fn admit(
        &self,
        proof: &Proof,
        key: &PublicKey,
        peer: SocketAddr,
    ) -> Result<Permissions, String>;
}

/// So that [`crate::BrokerConfig`] stays `Debug` without asking implementors for it.
impl fmt::Debug for dyn KeyAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAuthority")
            .field("broker_key", &self.broker_key())
            .finish_non_exhaustive()
    }
}

/// What a connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permissions {
    /// Everything (the master, operators, PLAIN users by default).
    Full,
    /// A minion: consume/get only its own queue `names::minion_queue(id)`; publish only to
    /// the default exchange "" with routing key `names::RESULTS_QUEUE`, or to
    /// `names::EVENTS_EXCHANGE` with a routing key `names::minion_event_prefix(id)`
    /// followed by one word (non-empty, no `.`: minion `web` may not publish
    /// `minion.web.01.up`, an event of minion `web.01`); passive declares of its own
    /// queue and of those exchanges are fine; every other declare, bind, unbind, delete,
    /// purge is 403 ACCESS_REFUSED.
    Minion { id: String },
}
