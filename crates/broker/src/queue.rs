//! Queues: the messages waiting in order and the consumers they are handed to.
//!
//! A queue holds references (`Arc<Message>`) into the message store, never copies.
//! Handing messages to consumers needs the consumers' channels (credit, outbox), so the
//! dispatch loop lives in [`crate::vhost`], which owns both.
//!
//! Limits live here too: a queue counts its ready messages and their body bytes, and
//! with `x-max-length` / `x-max-length-bytes` either refuses a message that would not
//! fit ([`Queue::would_overflow`], for `reject-publish[-dlx]`) or drops its oldest ready
//! messages until it fits again ([`Queue::trim_to_limits`], `drop-head`). As in
//! RabbitMQ, only ready messages count, not those delivered and awaiting an ack.
//! Expiry at the head is [`Queue::expire_head`]; both hand what they drop to
//! [`Queue::dead_letter`], which keeps it only when the queue has a dead-letter exchange.

use crate::arguments::{Overflow, QueueArgs};
use crate::deadletter::{DeadLetter, Reason};
use crate::expiry::NEVER;
use crate::message::Message;
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
    /// Ready messages; change it only through the methods below, which keep
    /// [`Queue::ready_bytes`] right.
    pub ready: VecDeque<Queued>,
    /// Body bytes of the ready messages.
    pub ready_bytes: u64,
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
    pub fn message_count(&self) -> u32 {
        u32::try_from(self.ready.len()).unwrap_or(u32::MAX)
    }

    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.consumers.len()).unwrap_or(u32::MAX)
    }

    pub fn consumer_mut(&mut self, tag: &str) -> Option<&mut Consumer> {
        self.consumers.iter_mut().find(|c| &*c.tag == tag)
    }

    /// Appends a message.
    pub fn push(&mut self, item: Queued) {
        self.ready_bytes += item.msg.body.len() as u64;
        self.ready.push_back(item);
    }

    /// Takes the oldest ready message.
    pub fn pop_front(&mut self) -> Option<Queued> {
        let item = self.ready.pop_front()?;
        self.ready_bytes -= item.msg.body.len() as u64;
        Some(item)
    }

    /// Drops every ready message; returns how many there were.
    pub fn clear(&mut self) -> u32 {
        let count = self.message_count();
        self.ready.clear();
        self.ready_bytes = 0;
        count
    }

    /// Puts messages (with their deadlines) back at the head of the queue, keeping their
    /// original order.
    pub fn requeue_front(&mut self, msgs: impl DoubleEndedIterator<Item = (Arc<Message>, u64)>) {
        for (msg, deadline) in msgs.rev() {
            self.ready_bytes += msg.body.len() as u64;
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
            .is_some_and(|max| self.ready.len() as u64 + 1 > max)
            || limits
                .max_bytes
                .is_some_and(|max| self.ready_bytes + body_len as u64 > max)
    }

    /// With `x-overflow = drop-head`: drops (dead-letters) the oldest ready messages
    /// until the queue is within its limits.
    pub fn trim_to_limits(&mut self, dead: &mut Vec<DeadLetter>) {
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
        while self.ready.len() as u64 > max_len || self.ready_bytes > max_bytes {
            let Some(item) = self.pop_front() else {
                return;
            };
            self.dead_letter(item.msg, Reason::MaxLen, dead);
        }
    }

    /// Drops (dead-letters) expired messages at the head: those whose deadline is before
    /// `now`, and with `inclusive` also those due exactly now. Deliveries check with
    /// `inclusive = false`, so a message published with TTL 0 still reaches a consumer
    /// waiting for it in the same operation; everything else uses `inclusive = true`.
    pub fn expire_head(&mut self, now: u64, inclusive: bool, dead: &mut Vec<DeadLetter>) {
        while let Some(front) = self.ready.front() {
            let expired = front.deadline < now || (inclusive && front.deadline == now);
            if !expired {
                return;
            }
            if let Some(item) = self.pop_front() {
                self.dead_letter(item.msg, Reason::Expired, dead);
            }
        }
    }

    /// The deadline of the head message, if it has one.
    pub fn head_deadline(&self) -> Option<u64> {
        self.ready
            .front()
            .map(|m| m.deadline)
            .filter(|&d| d != NEVER)
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
