//! The state every connection of one broker shares.

use crate::config::BrokerConfig;
use crate::queue::ConnId;
use crate::store::Store;
use crate::vhost::Vhost;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One running broker: its settings and its vhost.
#[derive(Debug)]
pub struct Broker {
    pub config: BrokerConfig,
    pub vhost: Vhost,
    next_connection: AtomicU64,
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
            config,
            vhost: Vhost::new(store),
            next_connection: AtomicU64::new(1),
        })
    }

    /// Writes what the store has queued and stops it; called once no client remains.
    pub fn close(&self) {
        self.vhost.close_store();
    }

    /// Messages in memory exceed the configured limit: publishers must wait.
    pub fn memory_alarm(&self) -> bool {
        crate::message::bytes_in_memory() > self.config.memory_limit
    }

    pub fn next_connection_id(&self) -> ConnId {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}
