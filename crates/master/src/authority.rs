//! The embedded broker's gatekeeper: the key registry behind the broker's
//! [`KeyAuthority`] hook.
//!
//! The master's own key and accepted operators get full rights, accepted minions the
//! minion permissions; everything else is recorded and refused with a text that says
//! what to do. Keys accepted during a login (auto-accept) are handed to the daemon
//! through [`Accepted`], which declares their queues.

use crate::registry::{Admission, KeyRecord, Registry};
use dispatch_broker::{KeyAuthority, Permissions};
use dispatch_common::keys::PublicKey;
use dispatch_common::rpc::Role;
use dispatch_common::sasl::Proof;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The registry shared by the broker's handshakes and the RPC handlers.
#[derive(Debug, Clone)]
pub struct SharedRegistry(Arc<Mutex<Registry>>);

impl SharedRegistry {
    pub fn new(registry: Registry) -> Self {
        Self(Arc::new(Mutex::new(registry)))
    }

    /// Locks the registry; never held across an await.
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keys accepted outside the RPC path, waiting for their queues to be declared.
#[derive(Debug, Default)]
pub struct Accepted {
    records: Mutex<Vec<KeyRecord>>,
    pub notify: Notify,
}

impl Accepted {
    /// Hands over a key accepted outside the RPC path.
    pub fn push(&self, record: KeyRecord) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
        self.notify.notify_one();
    }

    /// Everything accepted since the last call.
    pub fn take(&self) -> Vec<KeyRecord> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The [`KeyAuthority`] of the embedded broker.
#[derive(Debug)]
pub struct RegistryAuthority {
    pub master_key: PublicKey,
    pub registry: SharedRegistry,
    pub accepted: Arc<Accepted>,
}

impl KeyAuthority for RegistryAuthority {
    fn broker_key(&self) -> PublicKey {
        self.master_key
    }

    fn admit(
        &self,
        proof: &Proof,
        key: &PublicKey,
        peer: SocketAddr,
    ) -> Result<Permissions, String> {
        if *key == self.master_key {
            return Ok(Permissions::Full);
        }
        let decided = self
            .registry
            .lock()
            .admit(&proof.id, proof.role, key, &proof.groups);
        match decided {
            Ok((Admission::Admitted(role), newly_accepted)) => {
                if let Some(record) = newly_accepted {
                    self.accepted.push(record);
                }
                tracing::debug!(id = %proof.id, %peer, ?role, "key login");
                Ok(match role {
                    Role::Operator => Permissions::Full,
                    Role::Minion => Permissions::Minion {
                        id: proof.id.clone(),
                    },
                })
            }
            Ok((Admission::Refused(reason), _)) => Err(reason),
            Err(e) => {
                tracing::error!("key registry: {e}");
                Err("the master cannot read or write its key registry; see its log".into())
            }
        }
    }
}
