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
//! (its [`Message::location`] is set) it is *paged out* to a small [`Spilled::Paged`]
//! reference. As the head drains it is refilled from `spill`, reading paged messages back
//! from the message log. A million queued messages cost tens of megabytes, not their
//! bodies.
//!
//! # Limits and expiry
//!
//! A queue counts its waiting messages and their body bytes, and with `x-max-length` /
//! `x-max-length-bytes` either refuses a message that would not fit
//! ([`Queue::would_overflow`], for `reject-publish[-dlx]`) or drops its oldest messages
//! until it fits again ([`Queue::trim_to_limits`], `drop-head`). As in RabbitMQ, only
//! waiting messages count, not those delivered and awaiting an ack. Expiry at the head is
//! [`Queue::expire_head`]; both hand what they drop to [`Queue::dead_letter`], which keeps
//! it only when the queue has a dead-letter exchange, and record in the store that the
//! message left the queue.
//!
//! [`QUEUE_MEMORY_HEAD`]: crate::config::QUEUE_MEMORY_HEAD

use crate::arguments::{Overflow, QueueArgs};
use crate::config::QUEUE_MEMORY_HEAD;
use crate::deadletter::{DeadLetter, Reason};
use crate::expiry::NEVER;
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
    /// When it expires (milliseconds on the vhost clock), or [`NEVER`]. Kept across
    /// deliveries and requeues, as RabbitMQ does.
    pub deadline: u64,
}

/// A message behind the in-memory head of a persisted queue.
#[derive(Debug)]
pub enum Spilled {
    /// Not written by the store yet.
    Memory(Queued),
    /// On disk only: its store id, where its record is, and what the queue needs to
    /// know without reading it.
    Paged {
        id: u64,
        location: u64,
        deadline: u64,
        body_len: u32,
        redelivered: bool,
    },
}

impl Spilled {
    fn deadline(&self) -> u64 {
        match self {
            Spilled::Memory(q) => q.deadline,
            Spilled::Paged { deadline, .. } => *deadline,
        }
    }
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
    /// The arguments the broker acts on (TTL, expiry, limits, dead-lettering).
    pub args: QueueArgs,
    /// The head, in memory; change it only through the methods below, which keep
    /// `waiting_bytes` right.
    ready: VecDeque<Queued>,
    /// Behind the head (persisted queues only), paged out once stored.
    spill: VecDeque<Spilled>,
    /// Entries of `spill` before this index have been considered for paging out.
    unpaged: usize,
    /// Body bytes of the waiting messages (head and spill).
    waiting_bytes: u64,
    /// The deadline of the pending head-expiry timer, if one is scheduled.
    pub head_timer: Option<u64>,
    /// An `x-expires` timer is scheduled.
    pub expiry_timer: bool,
    /// When the queue expires if it stays unused (`x-expires`), or [`NEVER`].
    pub expires_at: u64,
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
        args: QueueArgs,
    ) -> Self {
        Self {
            name,
            id,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            args,
            ready: VecDeque::new(),
            spill: VecDeque::new(),
            unpaged: 0,
            waiting_bytes: 0,
            head_timer: None,
            expiry_timer: false,
            expires_at: NEVER,
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

    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.consumers.len()).unwrap_or(u32::MAX)
    }

    pub fn consumer_mut(&mut self, tag: &str) -> Option<&mut Consumer> {
        self.consumers.iter_mut().find(|c| &*c.tag == tag)
    }

    /// Durable queues survive restarts, except exclusive ones (they die with their
    /// connection anyway, as in RabbitMQ).
    pub fn is_persisted(&self) -> bool {
        self.durable && self.exclusive_owner.is_none()
    }

    /// Appends a message; `spill` allows it behind the in-memory head (persisted
    /// queues with a store).
    pub fn push(&mut self, item: Queued, spill: bool) {
        self.waiting_bytes += item.msg.body.len() as u64;
        if spill && (!self.spill.is_empty() || self.ready.len() >= QUEUE_MEMORY_HEAD) {
            self.spill.push_back(Spilled::Memory(item));
        } else {
            self.ready.push_back(item);
        }
    }

    /// Appends a message known only by its place in the store (recovery).
    pub fn push_paged(
        &mut self,
        id: u64,
        location: u64,
        body_len: u32,
        deadline: u64,
        redelivered: bool,
    ) {
        self.waiting_bytes += u64::from(body_len);
        self.spill.push_back(Spilled::Paged {
            id,
            location,
            deadline,
            body_len,
            redelivered,
        });
        self.unpaged = self.spill.len();
    }

    /// Replaces spilled messages the store has written by references to their records.
    pub fn page_out(&mut self) {
        while let Some(entry) = self.spill.get_mut(self.unpaged) {
            if let Spilled::Memory(queued) = entry {
                // Messages never stored (transient ones, or after a failed write) stay
                // in memory; a stored one not yet written holds back those behind it,
                // which were written after it.
                let Some(id) = queued.msg.stored().filter(|_| !queued.msg.write_failed()) else {
                    self.unpaged += 1;
                    continue;
                };
                let Some(location) = queued.msg.location() else {
                    return;
                };
                *entry = Spilled::Paged {
                    id,
                    location,
                    deadline: queued.deadline,
                    body_len: queued.msg.body.len() as u32,
                    redelivered: queued.redelivered,
                };
            }
            self.unpaged += 1;
        }
    }

    /// Takes the oldest waiting message, refilling the head from the spill (reading
    /// paged messages back through `store`). A paged message that cannot be read is
    /// logged and lost.
    pub fn pop_front(&mut self, store: Option<&Store>) -> Option<Queued> {
        if self.ready.is_empty() {
            self.refill(store);
        }
        let item = self.ready.pop_front()?;
        self.waiting_bytes -= item.msg.body.len() as u64;
        Some(item)
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
                    deadline,
                    body_len,
                    redelivered,
                } => match store.map(|s| (s, s.read(id, location))) {
                    Some((_, Ok(msg))) => self.ready.push_back(Queued {
                        msg,
                        redelivered,
                        deadline,
                    }),
                    Some((store, Err(e))) => {
                        tracing::error!(queue = %self.name, "cannot read message {id} back from the store: {e}; it is lost");
                        self.waiting_bytes -= u64::from(body_len);
                        store.removed(self.id, id);
                    }
                    None => self.waiting_bytes -= u64::from(body_len),
                },
            }
        }
    }

    /// Each waiting message the store has written: its id, where its record was written
    /// and whether it was delivered before.
    pub fn stored_entries(&self) -> impl Iterator<Item = (u64, u64, bool)> + '_ {
        let memory = |q: &Queued| Some((q.msg.stored()?, q.msg.location()?, q.redelivered));
        let spilled = self.spill.iter().filter_map(move |entry| match entry {
            Spilled::Memory(q) => memory(q),
            Spilled::Paged {
                id,
                location,
                redelivered,
                ..
            } => Some((*id, *location, *redelivered)),
        });
        self.ready.iter().filter_map(memory).chain(spilled)
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
        self.waiting_bytes = 0;
        (count, stored)
    }

    /// Puts messages (with their deadlines) back at the head of the queue, keeping their
    /// original order.
    pub fn requeue_front(&mut self, msgs: impl DoubleEndedIterator<Item = (Arc<Message>, u64)>) {
        for (msg, deadline) in msgs.rev() {
            self.waiting_bytes += msg.body.len() as u64;
            self.ready.push_front(Queued {
                msg,
                redelivered: true,
                deadline,
            });
        }
    }

    /// Whether one more message of `body_len` bytes would break a length limit.
    pub fn would_overflow(&self, body_len: usize) -> bool {
        let Some(limits) = &self.args.limits else {
            return false;
        };
        limits
            .max_length
            .is_some_and(|max| self.len() as u64 + 1 > max)
            || limits
                .max_bytes
                .is_some_and(|max| self.waiting_bytes + body_len as u64 > max)
    }

    /// With `x-overflow = drop-head`: drops (dead-letters) the oldest waiting messages
    /// until the queue is within its limits.
    pub fn trim_to_limits(&mut self, dead: &mut Vec<DeadLetter>, store: Option<&Store>) {
        let Some(limits) = &self.args.limits else {
            return;
        };
        if limits.overflow != Overflow::DropHead {
            return;
        }
        let (max_len, max_bytes) = (
            limits.max_length.unwrap_or(u64::MAX),
            limits.max_bytes.unwrap_or(u64::MAX),
        );
        while self.len() as u64 > max_len || self.waiting_bytes > max_bytes {
            let Some(item) = self.pop_front(store) else {
                return;
            };
            self.drop_message(item.msg, Reason::MaxLen, dead, store);
        }
    }

    /// Drops (dead-letters) expired messages at the head: those whose deadline is before
    /// `now`, and with `inclusive` also those due exactly now. Deliveries check with
    /// `inclusive = false`, so a message published with TTL 0 still reaches a consumer
    /// waiting for it in the same operation; everything else uses `inclusive = true`.
    pub fn expire_head(
        &mut self,
        now: u64,
        inclusive: bool,
        dead: &mut Vec<DeadLetter>,
        store: Option<&Store>,
    ) {
        while let Some(deadline) = self.head_deadline() {
            let expired = deadline < now || (inclusive && deadline == now);
            if !expired {
                return;
            }
            if let Some(item) = self.pop_front(store) {
                self.drop_message(item.msg, Reason::Expired, dead, store);
            }
        }
    }

    /// The deadline of the head message, if it has one.
    pub fn head_deadline(&self) -> Option<u64> {
        let deadline = match self.ready.front() {
            Some(head) => head.deadline,
            None => self.spill.front()?.deadline(),
        };
        (deadline != NEVER).then_some(deadline)
    }

    /// A message leaves the queue for good without being consumed: the store forgets it
    /// for this queue and the dead-letter exchange, if any, gets it.
    fn drop_message(
        &self,
        msg: Arc<Message>,
        reason: Reason,
        dead: &mut Vec<DeadLetter>,
        store: Option<&Store>,
    ) {
        if let (Some(store), Some(id)) = (store, msg.stored()) {
            store.removed(self.id, id);
        }
        self.dead_letter(msg, reason, dead);
    }

    /// Hands a message that died here to the dead-letter exchange, if the queue has one;
    /// otherwise it is dropped.
    pub fn dead_letter(&self, msg: Arc<Message>, reason: Reason, dead: &mut Vec<DeadLetter>) {
        if let Some(target) = &self.args.dead_letter {
            dead.push(DeadLetter {
                msg,
                reason,
                queue: self.name.clone(),
                target: target.clone(),
            });
        }
    }

    /// Whether the queue is usable by connection `conn` (exclusive queues belong to one).
    pub fn accessible_by(&self, conn: ConnId) -> bool {
        self.exclusive_owner.is_none_or(|owner| owner == conn)
    }
}
