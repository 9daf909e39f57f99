//! What the master knows of each minion's presence: the last announcement (`up`,
//! heartbeat, `down`) it made on the events exchange, verified like a reply, and its
//! version. Whether a minion is connected *now* is asked of the broker instead (see
//! [`crate::connected`]): an announcement can be stale, a consumer cannot.

use crate::authority::SharedRegistry;
use dispatch_common::envelope::{Envelope, domain};
use dispatch_common::message::Presence;
use dispatch_common::rpc::Role;
use std::collections::HashMap;
use std::sync::Mutex;

/// Binding key of the presence events on the events exchange.
pub const PRESENCE_BINDING: &str = "minion.#";

/// The last verified announcement of each minion.
#[derive(Debug, Default)]
pub struct PresenceBook(Mutex<HashMap<String, Presence>>);

impl PresenceBook {
    /// Records an announcement if it is signed by the accepted key of the minion it
    /// names; returns what was wrong otherwise.
    pub fn record(&self, bytes: &[u8], registry: &SharedRegistry) -> Result<(), String> {
        let envelope = Envelope::decode(bytes).map_err(|e| e.to_string())?;
        let key = registry
            .lock()
            .accepted_key(&envelope.signer, Role::Minion)
            .ok_or_else(|| format!("presence of '{}', not an accepted minion", envelope.signer))?;
        let presence: Presence = envelope
            .open(domain::PRESENCE, &key)
            .map_err(|e| e.to_string())?;
        if presence.minion != envelope.signer {
            return Err(format!(
                "'{}' announced '{}'",
                envelope.signer, presence.minion
            ));
        }
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let newer = book
            .get(&presence.minion)
            .is_none_or(|old| old.at_ms <= presence.at_ms);
        if newer {
            book.insert(presence.minion.clone(), presence);
        }
        Ok(())
    }

    /// The last announcement of `id`.
    pub fn last(&self, id: &str) -> Option<Presence> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }
}
