//! The state every connection of one broker shares.

use crate::config::BrokerConfig;
use crate::queue::ConnId;
use crate::vhost::Vhost;
use std::sync::atomic::{AtomicU64, Ordering};

/// One running broker: its settings and its vhost.
#[derive(Debug)]
pub struct Broker {
    pub config: BrokerConfig,
    pub vhost: Vhost,
    next_connection: AtomicU64,
}

impl Broker {
    pub fn new(config: BrokerConfig) -> Self {
        Self {
            config,
            vhost: Vhost::new(),
            next_connection: AtomicU64::new(1),
        }
    }

    pub fn next_connection_id(&self) -> ConnId {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}
