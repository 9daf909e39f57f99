//! How the vhost uses the store: recording changes to the durable topology, recovery at
//! start-up, and recording that a stored message left a durable queue.

use crate::arguments::QueueArgs;
use crate::exchange::{Binding, Exchange, ExchangeKind};
use crate::expiry::{NEVER, message_deadline};
use crate::queue::Queue;
use crate::store::Recovered;
use crate::store::topology::{BindingDef, Change, ExchangeDef, QueueDef};
use crate::vhost::{State, arm_head_expiry, touch};
use std::sync::Arc;

/// Exchanges every broker declares itself; they are never written to the store.
fn predeclared(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

/// How the store records a durable exchange.
pub(crate) fn exchange_def(e: &Exchange) -> ExchangeDef {
    ExchangeDef {
        name: e.name.to_string(),
        kind: e.kind.as_str().to_owned(),
        auto_delete: e.auto_delete,
        internal: e.internal,
        arguments: e.arguments.clone(),
    }
}

/// How the store records a persisted queue.
pub(crate) fn queue_def(q: &Queue) -> QueueDef {
    QueueDef {
        name: q.name.to_string(),
        id: q.id,
        auto_delete: q.auto_delete,
        arguments: q.arguments.clone(),
    }
}

/// How the store records a binding of durable exchange `exchange`.
pub(crate) fn binding_def(exchange: &str, b: &Binding) -> BindingDef {
    BindingDef {
        exchange: exchange.to_owned(),
        queue: b.queue.to_string(),
        routing_key: b.routing_key.to_string(),
        arguments: b.arguments.clone(),
    }
}

impl State {
    /// Records a change to the durable topology; without a store, nothing is kept.
    /// The store writes it with the next batch (see [`crate::store`]).
    pub(crate) fn record_topology(&self, change: Change) {
        if let Some(store) = &self.store {
            store.change_topology(change);
        }
    }

    /// Records that the durable exchanges among `removed` are gone.
    pub(crate) fn record_exchanges_deleted(&self, removed: &[Exchange]) {
        for ex in removed
            .iter()
            .filter(|e| e.durable && !predeclared(&e.name))
        {
            self.record_topology(Change::ExchangeDeleted(ex.name.to_string()));
        }
    }

    /// Rebuilds the durable topology and requeues the recovered messages.
    pub(crate) fn restore(&mut self, recovered: Recovered) {
        let Recovered {
            topology, messages, ..
        } = recovered;
        for e in topology.exchanges().cloned() {
            let Some(kind) = ExchangeKind::parse(&e.kind) else {
                tracing::warn!(
                    "metadata names exchange '{}' of unknown type '{}'; skipped",
                    e.name,
                    e.kind
                );
                continue;
            };
            let ex = Exchange::new(&e.name, kind, true, e.auto_delete, e.internal, e.arguments);
            self.exchanges.insert(ex.name.clone(), ex);
        }
        let mut by_id = std::collections::HashMap::new();
        for q in topology.queues().cloned() {
            let name: Arc<str> = q.name.as_str().into();
            by_id.insert(q.id, name.clone());
            self.next_queue_id = self.next_queue_id.max(q.id);
            let args = QueueArgs::parse(&q.name, &q.arguments).unwrap_or_else(|e| {
                tracing::warn!(
                    "queue '{}' has arguments this broker refuses ({e}); they are ignored",
                    q.name
                );
                QueueArgs::default()
            });
            let queue = Queue::new(
                name.clone(),
                q.id,
                true,
                None,
                q.auto_delete,
                q.arguments,
                args,
            );
            self.queues.insert(name, queue);
        }
        // The vhost's counter is the last id given out: the next one is unused.
        self.next_queue_id = self.next_queue_id.max(topology.next_queue_id());
        for b in topology.bindings().cloned() {
            if let Some(ex) = self.exchanges.get_mut(b.exchange.as_str()) {
                ex.bind(Binding {
                    queue: b.queue.as_str().into(),
                    routing_key: b.routing_key.into(),
                    arguments: b.arguments,
                });
            }
        }
        let now = self.timers.now();
        let wall_now = crate::store::wall_clock_ms();
        for recovered in messages {
            for (queue_id, delivered) in recovered.queues {
                let Some(q) = by_id
                    .get(&queue_id)
                    .and_then(|name| self.queues.get_mut(name))
                else {
                    continue;
                };
                // TTLs run on from when the message was written: what is left of the
                // smaller of the queue's and the message's own, on the vhost clock.
                let deadline = match (q.args.message_ttl_ms, recovered.expiration_ms) {
                    (None, None) => NEVER,
                    (ttl, expiration) => {
                        let elapsed = wall_now.saturating_sub(recovered.published_ms);
                        let left = |t: Option<u64>| t.map(|t| t.saturating_sub(elapsed));
                        message_deadline(now, left(ttl), left(expiration))
                    }
                };
                q.push_paged(
                    recovered.id,
                    recovered.location,
                    recovered.body_len,
                    deadline,
                    delivered,
                );
            }
        }
        // Start the clocks of what was recovered: head expiry and x-expires.
        let timers = &mut self.timers;
        for q in self.queues.values_mut() {
            touch(q, timers);
            arm_head_expiry(q, timers);
        }
    }

    /// Records that stored messages `ids` left durable queue `queue_id` for good
    /// (purged, or the queue deleted).
    pub(crate) fn forget_stored_ids(&self, queue_id: u64, persisted: bool, ids: Vec<u64>) {
        let Some(store) = self.store.as_ref().filter(|_| persisted) else {
            return;
        };
        for id in ids {
            store.removed(queue_id, id);
        }
    }
}
