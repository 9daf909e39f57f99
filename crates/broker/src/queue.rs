//! Queues: the messages waiting in order and the consumers they are handed to.
//!
//! A queue holds references (`Arc<Message>`) into the message store, never copies.
//! Handing messages to consumers needs the consumers' channels (credit, outbox), so the
//! dispatch loop lives in [`crate::vhost`], which owns both.

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
    pub ready: VecDeque<Queued>,
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
