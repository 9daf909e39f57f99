//! The state every connection of one broker shares.

use crate::config::BrokerConfig;
use crate::queue::ConnId;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::vhost::Vhost;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One running broker: its settings and its vhost.
#[derive(Debug)]
pub struct Broker {
    pub config: BrokerConfig,
    pub vhost: Vhost,
    /// The disk store the vhost writes to, if any; connections wait on its topology
    /// syncs without taking the vhost lock.
    pub(crate) store: Option<Arc<Store>>,
    /// Open connections by user, for [`Broker::close_connections_of`].
    pub(crate) sessions: Sessions,
    next_connection: AtomicU64,
    /// Free disk space is below `config.disk_free_limit` ([`crate::disk_alarm`]).
    disk_alarm: AtomicBool,
}

impl Broker {
    /// Opens the broker: with a data directory, recovers its durable state from it
    /// (see [`crate::store`]); without one, everything lives in memory.
    pub fn open(config: BrokerConfig) -> std::io::Result<Self> {
        let store = match &config.data_dir {
            Some(dir) => {
                let (store, recovered) = Store::open(dir)?;
                Some((Arc::new(store), recovered))
            }
            None => None,
        };
        Ok(Self {
            store: store.as_ref().map(|(store, _)| store.clone()),
            config,
            vhost: Vhost::new(store),
            sessions: Sessions::default(),
            next_connection: AtomicU64::new(1),
            disk_alarm: AtomicBool::new(false),
        })
        .inspect(|broker| {
            // Before any client connects; a failure is reported by the alarm's task.
            let _ = crate::disk_alarm::check(broker);
        })
    }

    /// Writes what the store has queued and stops it; called once no client remains.
    pub fn close(&self) {
        self.vhost.close_store();
    }

    /// Why publishers must wait, if they must: messages in memory above the configured
    /// limit, or free disk space below it.
    pub fn alarm(&self) -> Option<&'static str> {
        if crate::message::bytes_in_memory() > self.config.memory_limit {
            Some("low on memory")
        } else if self.disk_alarm.load(Ordering::Relaxed) {
            Some("low on disk space")
        } else {
            None
        }
    }

    /// Sets the disk alarm; returns whether it was set before.
    pub(crate) fn set_disk_alarm(&self, on: bool) -> bool {
        self.disk_alarm.swap(on, Ordering::Relaxed)
    }

    /// Closes every connection authenticated as `user` (by key: the id its proof names;
    /// by password: the login) with `connection.close` 320 CONNECTION_FORCED and
    /// `reason`, as a shutdown does; returns how many were told to close. Logins of
    /// `user` still in their handshake are counted too and closed as soon as they open.
    ///
    /// Call it after the revocation is recorded where the [`crate::KeyAuthority`]
    /// looks, so no login can slip between the two. It only signals the connection
    /// tasks (which send the close and release their channels, consumers and exclusive
    /// queues), so it never blocks; with no connection of `user` it is one hash lookup.
    pub fn close_connections_of(&self, user: &str, reason: &str) -> usize {
        let closed = self.sessions.revoke(user, reason);
        if closed > 0 {
            tracing::info!(
                user,
                closed,
                "closing the connections of a revoked user: {reason}"
            );
        }
        closed
    }

    /// How many connections `user` has open (or logging in).
    pub fn connections_of(&self, user: &str) -> usize {
        self.sessions.count(user)
    }

    pub fn next_connection_id(&self) -> ConnId {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}
