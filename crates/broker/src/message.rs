//! A published message as the broker keeps it: the content header and body exactly as
//! they arrived, shared by every queue the message was routed to (one publish to N
//! queues stores the body once).

use bytes::Bytes;
use std::sync::Arc;

/// One published message. Queues hold `Arc<Message>`; nothing is copied per queue.
#[derive(Debug)]
pub struct Message {
    pub exchange: Arc<str>,
    pub routing_key: Box<str>,
    /// The content header payload (class, weight, body size, properties), as received
    /// unless the broker had to remove `BCC`.
    pub header: Bytes,
    pub body: Bytes,
    /// Published with `delivery-mode` 2.
    pub persistent: bool,
}

impl Message {
    /// Bytes this message occupies, for limits and accounting.
    pub fn size(&self) -> usize {
        self.header.len() + self.body.len() + self.routing_key.len()
    }
}
