//! The durable topology as the store sees it: exchanges, queues and bindings, and the
//! [`Change`]s that build it. The metadata file ([`super::metadata`]) is a log of changes;
//! replaying them into a [`Topology`] gives what a restart restores.

use amq_protocol::types::FieldTable;
use std::collections::BTreeMap;

/// A durable exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    pub name: String,
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// A durable queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    pub name: String,
    pub id: u64,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// A binding between a durable exchange and a durable queue.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingDef {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// One change to the durable topology, as the metadata log records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Exchange(ExchangeDef),
    /// The exchange and its bindings are gone.
    ExchangeDeleted(String),
    Queue(QueueDef),
    /// The queue and its bindings are gone.
    QueueDeleted(String),
    Bound(BindingDef),
    Unbound(BindingDef),
    /// Queue ids below this one were used (a snapshot keeps it: ids of deleted queues
    /// are never given out again, since the message log may still name them).
    NextQueueId(u64),
}

/// Bindings are kept by queue first, so a queue's deletion finds its own.
type BindingKey = (String, String, String);

/// Everything durable but the messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    exchanges: BTreeMap<String, ExchangeDef>,
    queues: BTreeMap<String, QueueDef>,
    /// By (queue, exchange, routing key); bindings differing only in arguments share one.
    bindings: BTreeMap<BindingKey, Vec<BindingDef>>,
    next_queue_id: u64,
}

impl Topology {
    /// Applies one change; changes that name what is not there change nothing.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Exchange(e) => {
                self.exchanges.insert(e.name.clone(), e);
            }
            Change::ExchangeDeleted(name) => {
                self.exchanges.remove(&name);
                self.bindings
                    .retain(|(_, exchange, _), _| *exchange != name);
            }
            Change::Queue(q) => {
                self.next_queue_id = self.next_queue_id.max(q.id + 1);
                self.queues.insert(q.name.clone(), q);
            }
            Change::QueueDeleted(name) => {
                self.queues.remove(&name);
                let from = (name.clone(), String::new(), String::new());
                let doomed: Vec<BindingKey> = self
                    .bindings
                    .range(from..)
                    .map(|(key, _)| key)
                    .take_while(|(queue, _, _)| *queue == name)
                    .cloned()
                    .collect();
                for key in doomed {
                    self.bindings.remove(&key);
                }
            }
            Change::Bound(b) => {
                let same = self.bindings.entry(key(&b)).or_default();
                if !same.contains(&b) {
                    same.push(b);
                }
            }
            Change::Unbound(b) => {
                let k = key(&b);
                if let Some(same) = self.bindings.get_mut(&k) {
                    same.retain(|existing| *existing != b);
                    if same.is_empty() {
                        self.bindings.remove(&k);
                    }
                }
            }
            Change::NextQueueId(id) => self.next_queue_id = self.next_queue_id.max(id),
        }
    }

    pub fn exchanges(&self) -> impl Iterator<Item = &ExchangeDef> {
        self.exchanges.values()
    }

    pub fn queues(&self) -> impl Iterator<Item = &QueueDef> {
        self.queues.values()
    }

    pub fn bindings(&self) -> impl Iterator<Item = &BindingDef> {
        self.bindings.values().flatten()
    }

    /// The lowest queue id never used by a durable queue.
    pub fn next_queue_id(&self) -> u64 {
        self.next_queue_id
    }

    /// The changes that rebuild this topology from nothing: a snapshot.
    pub fn snapshot(&self) -> impl Iterator<Item = Change> + '_ {
        let exchanges = self.exchanges().cloned().map(Change::Exchange);
        let queues = self.queues().cloned().map(Change::Queue);
        let bindings = self.bindings().cloned().map(Change::Bound);
        exchanges
            .chain(queues)
            .chain(bindings)
            .chain(std::iter::once(Change::NextQueueId(self.next_queue_id)))
    }
}

fn key(b: &BindingDef) -> BindingKey {
    (b.queue.clone(), b.exchange.clone(), b.routing_key.clone())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn exchange(name: &str) -> ExchangeDef {
        ExchangeDef {
            name: name.into(),
            kind: "topic".into(),
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
        }
    }

    pub fn queue(name: &str, id: u64) -> QueueDef {
        QueueDef {
            name: name.into(),
            id,
            auto_delete: false,
            arguments: FieldTable::default(),
        }
    }

    pub fn binding(exchange: &str, queue: &str, key: &str) -> BindingDef {
        BindingDef {
            exchange: exchange.into(),
            queue: queue.into(),
            routing_key: key.into(),
            arguments: FieldTable::default(),
        }
    }

    fn built(changes: impl IntoIterator<Item = Change>) -> Topology {
        let mut t = Topology::default();
        for change in changes {
            t.apply(change);
        }
        t
    }

    #[test]
    fn deleting_a_queue_or_an_exchange_takes_its_bindings_along() {
        let mut t = built([
            Change::Exchange(exchange("cmds")),
            Change::Exchange(exchange("events")),
            Change::Queue(queue("a", 1)),
            Change::Queue(queue("ab", 2)),
            Change::Bound(binding("cmds", "a", "x")),
            Change::Bound(binding("events", "a", "y")),
            Change::Bound(binding("cmds", "ab", "x")),
        ]);
        t.apply(Change::QueueDeleted("a".into()));
        let left: Vec<_> = t.bindings().cloned().collect();
        assert_eq!(left, vec![binding("cmds", "ab", "x")]);
        t.apply(Change::ExchangeDeleted("cmds".into()));
        assert_eq!(t.bindings().count(), 0);
        assert_eq!(t.exchanges().count(), 1);
        assert_eq!(t.next_queue_id(), 3, "ids of deleted queues stay used");
    }

    #[test]
    fn unbinding_removes_only_the_binding_with_the_same_arguments() {
        let mut other = binding("cmds", "a", "x");
        other.arguments.insert(
            "x-match".into(),
            amq_protocol::types::AMQPValue::Boolean(true),
        );
        let mut t = built([
            Change::Bound(binding("cmds", "a", "x")),
            Change::Bound(other.clone()),
            Change::Bound(other.clone()),
        ]);
        assert_eq!(t.bindings().count(), 2, "a repeated bind is one binding");
        t.apply(Change::Unbound(binding("cmds", "a", "x")));
        assert_eq!(t.bindings().cloned().collect::<Vec<_>>(), vec![other]);
    }

    #[test]
    fn a_snapshot_rebuilds_the_same_topology() {
        let t = built([
            Change::Exchange(exchange("cmds")),
            Change::Queue(queue("a", 7)),
            Change::Queue(queue("b", 9)),
            Change::QueueDeleted("b".into()),
            Change::Bound(binding("cmds", "a", "x.#")),
        ]);
        assert_eq!(built(t.snapshot()), t);
        assert_eq!(built(t.snapshot()).next_queue_id(), 10);
    }
}
