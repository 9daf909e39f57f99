//! Queues: the messages waiting in order and the consumers they are handed to.
//!
//! A queue holds references (`Arc<Message>`) to messages, never copies. Handing
//! messages to consumers needs the consumers' channels (credit, outbox), so the dispatch
//! loop lives in [`crate::vhost`], which owns both.
//!
//! # Bounded memory for durable backlogs
//!
//! A persisted queue keeps at most [`QUEUE_MEMORY_HEAD`] messages in memory (`ready`, the
//! head that consumers take from). Behind it, `spill` holds the rest in order: messages
//! not yet written by the store stay in memory, and once the store has written one
//! (its [`Message::location`] is set) it is *paged out* to a 24-byte [`Spilled::Paged`]
//! reference. As the head drains it is refilled from `spill`, reading paged messages back
//! from the message log. A million queued messages cost tens of megabytes, not their
//! bodies.
//!
//! [`QUEUE_MEMORY_HEAD`]: crate::config::QUEUE_MEMORY_HEAD

use crate::config::QUEUE_MEMORY_HEAD;
use crate::message::Message;
use crate::store::Store;
use amq_protocol::types::FieldTable;
use std::collections::VecDeque;
use std::sync::Arc;

/// Identifies a connection for the broker's lifetime.
pub type ConnId = u64;

/// Identifies an open channel: its connection and channel number.
pub type ChannelKey = (ConnId, u16);

/// A message waiting in a queue.
#[derive(Debug, Clone)]
pub struct Queued {
    pub msg: Arc<Message>,
    pub redelivered: bool,
}

/// A message behind the in-memory head of a persisted queue.
#[derive(Debug)]
pub enum Spilled {
    /// Not written by the store yet.
    Memory(Queued),
    /// On disk only: its store id and where its record is.
    Paged {
        id: u64,
        location: u64,
        redelivered: bool,
    },
}

/// A consumer attached to a queue.
#[derive(Debug)]
pub struct Consumer {
    pub tag: Arc<str>,
    pub channel: ChannelKey,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch (`basic.qos` with `global = false`); 0 is unlimited.
    pub prefetch: u16,
    pub unacked: u32,
}

impl Consumer {
    pub fn has_credit(&self) -> bool {
        self.no_ack || self.prefetch == 0 || self.unacked < u32::from(self.prefetch)
    }
}

/// A queue.
#[derive(Debug)]
pub struct Queue {
    pub name: Arc<str>,
    /// Distinguishes this queue from a later one of the same name.
    pub id: u64,
    pub durable: bool,
    pub exclusive_owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// The head, in memory.
    ready: VecDeque<Queued>,
    /// Behind the head (persisted queues only), paged out once stored.
    spill: VecDeque<Spilled>,
    /// Entries of `spill` before this index have been considered for paging out.
    unpaged: usize,
    pub consumers: Vec<Consumer>,
    /// Round-robin position among consumers.
    pub next_consumer: usize,
    /// An auto-delete queue goes when its last consumer does, once it has had one.
    pub had_consumer: bool,
}

impl Queue {
    pub fn new(
        name: Arc<str>,
        id: u64,
        durable: bool,
        exclusive_owner: Option<ConnId>,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> Self {
        Self {
            name,
            id,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            ready: VecDeque::new(),
            spill: VecDeque::new(),
            unpaged: 0,
            consumers: Vec::new(),
            next_consumer: 0,
            had_consumer: false,
        }
    }

    /// Messages waiting (not counting those delivered and unacknowledged).
    pub fn len(&self) -> usize {
        self.ready.len() + self.spill.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.spill.is_empty()
    }

    pub fn message_count(&self) -> u32 {
        u32::try_from(self.len()).unwrap_or(u32::MAX)
    }

    /// Appends a message; `spill` allows it behind the in-memory head (persisted
    /// queues with a store).
    pub fn push_back(&mut self, queued: Queued, spill: bool) {
        if spill && (!self.spill.is_empty() || self.ready.len() >= QUEUE_MEMORY_HEAD) {
            self.spill.push_back(Spilled::Memory(queued));
        } else {
            self.ready.push_back(queued);
        }
    }

    /// Appends a message known only by its place in the store (recovery).
    pub fn push_paged(&mut self, id: u64, location: u64, redelivered: bool) {
        self.spill.push_back(Spilled::Paged {
            id,
            location,
            redelivered,
        });
        self.unpaged = self.spill.len();
    }

    /// Replaces spilled messages the store has written by references to their records.
    pub fn page_out(&mut self) {
        while let Some(entry) = self.spill.get_mut(self.unpaged) {
            if let Spilled::Memory(queued) = entry {
                let (Some(id), Some(location)) = (queued.msg.stored(), queued.msg.location())
                else {
                    return; // later entries were written after this one
                };
                *entry = Spilled::Paged {
                    id,
                    location,
                    redelivered: queued.redelivered,
                };
            }
            self.unpaged += 1;
        }
    }

    /// The next message, refilling the head from the spill (reading paged messages
    /// back through `store`). A paged message that cannot be read is logged and lost.
    pub fn pop_front(&mut self, store: Option<&Store>) -> Option<Queued> {
        if self.ready.is_empty() {
            self.refill(store);
        }
        self.ready.pop_front()
    }

    fn refill(&mut self, store: Option<&Store>) {
        while self.ready.len() < QUEUE_MEMORY_HEAD {
            let Some(entry) = self.spill.pop_front() else {
                return;
            };
            self.unpaged = self.unpaged.saturating_sub(1);
            match entry {
                Spilled::Memory(queued) => self.ready.push_back(queued),
                Spilled::Paged {
                    id,
                    location,
                    redelivered,
                } => {
                    let Some(store) = store else { continue };
                    match store.read(id, location) {
                        Ok(msg) => self.ready.push_back(Queued { msg, redelivered }),
                        Err(e) => {
                            tracing::error!(queue = %self.name, "cannot read message {id} back from the store: {e}; it is lost");
                            store.removed(self.id, id);
                        }
                    }
                }
            }
        }
    }

    /// Removes every waiting message; returns how many there were and the store ids of
    /// those that were stored.
    pub fn clear(&mut self) -> (u32, Vec<u64>) {
        let count = self.message_count();
        let mut stored: Vec<u64> = self
            .ready
            .drain(..)
            .filter_map(|q| q.msg.stored())
            .collect();
        stored.extend(self.spill.drain(..).filter_map(|entry| match entry {
            Spilled::Memory(q) => q.msg.stored(),
            Spilled::Paged { id, .. } => Some(id),
        }));
        self.unpaged = 0;
        (count, stored)
    }

    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.consumers.len()).unwrap_or(u32::MAX)
    }

    pub fn consumer_mut(&mut self, tag: &str) -> Option<&mut Consumer> {
        self.consumers.iter_mut().find(|c| &*c.tag == tag)
    }

    /// Puts messages back at the head of the queue, keeping their original order.
    pub fn requeue_front(&mut self, msgs: impl DoubleEndedIterator<Item = Arc<Message>>) {
        for msg in msgs.rev() {
            self.ready.push_front(Queued {
                msg,
                redelivered: true,
            });
        }
    }

    /// Durable queues survive restarts, except exclusive ones (they die with their
    /// connection anyway, as in RabbitMQ).
    pub fn is_persisted(&self) -> bool {
        self.durable && self.exclusive_owner.is_none()
    }

    /// Whether the queue is usable by connection `conn` (exclusive queues belong to one).
    pub fn accessible_by(&self, conn: ConnId) -> bool {
        self.exclusive_owner.is_none_or(|owner| owner == conn)
    }
}
