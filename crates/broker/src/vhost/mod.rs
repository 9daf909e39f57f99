//! The virtual host `/`: exchanges, queues, consumers and every open channel's delivery
//! state, behind one lock.
//!
//! Connection tasks call into [`Vhost::lock`] for each method and hold the lock only for
//! in-memory work (never across an `.await`). Routing a message, queueing it and writing
//! its `basic.deliver` into the consumer's outbox all happen under that lock, so a
//! message never waits in an intermediate channel. Deliveries obey each consumer's
//! prefetch, the channel's global prefetch, `channel.flow` and the consumer connection's
//! outbox bound.
//!
//! Expiry, limits and dead-lettering hook in at three points: [`State::publish`] (and
//! the republishing of dead letters) queues through `enqueue`, which applies
//! `reject-publish` and computes each message's deadline; `dispatch` checks the head for
//! expiry before each delivery, then trims a `drop-head` queue to its limits, expires
//! what is due and schedules the head's timer; and [`State::run_timers`], called by the
//! [`crate::expiry::run`] task, handles what is due. Messages that die are collected
//! while the lock is held and republished to their dead-letter exchanges when the
//! [`VhostGuard`] is dropped, iteratively (a dead letter can cause more), so every
//! method gets this without remembering to. The guard's drop also hands the store the
//! live messages of a segment it wants compacted ([`relocation`]).

use crate::arguments::{Overflow, QueueArgs};
use crate::codec::delivery::{ChannelOut, Content, Origin, put_deliver, put_get_ok};
use crate::codec::method::put_method;
use crate::confirm::Confirm;
use crate::deadletter::{self, DeadLetter, Reason};
use crate::error::AmqpError;
use crate::exchange::{Binding, Exchange, ExchangeKind};
use crate::expiry::{Due, NEVER, TimerKind, Timers, message_deadline};
use crate::fast_map::FastMap;
use crate::message::Message;
use crate::outbox::Outbox;
use crate::queue::{ChannelKey, ConnId, Consumer, Queue, Queued};
use crate::store::{Recovered, Store};
use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::{AMQPValue, FieldTable};
use std::collections::{BTreeMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

mod delivery;
pub(crate) mod relocation;
mod topology;

/// The shared broker state.
#[derive(Debug, Default)]
pub struct Vhost {
    state: Mutex<State>,
}

impl Vhost {
    /// A vhost with the exchanges every AMQP broker predeclares, and what `store`
    /// recovered (durable topology and persistent messages).
    pub fn new(store: Option<(Arc<Store>, Recovered)>) -> Self {
        let mut state = State::default();
        state.exchanges.insert(
            "".into(),
            Exchange::new(
                "",
                ExchangeKind::Direct,
                true,
                false,
                false,
                FieldTable::default(),
            ),
        );
        for (name, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            state.exchanges.insert(
                name.into(),
                Exchange::new(name, kind, true, false, false, FieldTable::default()),
            );
        }
        if let Some((store, recovered)) = store {
            state.store = Some(store);
            state.restore(recovered);
        }
        Self {
            state: Mutex::new(state),
        }
    }

    /// Flushes and stops the store, if any.
    pub fn close_store(&self) {
        let store = self.lock().store.clone();
        if let Some(store) = store {
            store.close();
        }
    }

    /// Locks the state for one operation. Never hold the guard across an `.await`.
    pub fn lock(&self) -> VhostGuard<'_> {
        VhostGuard(self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The locked state. Dropping it republishes the messages that died meanwhile (see the
/// module doc) before the lock is released.
#[derive(Debug)]
pub struct VhostGuard<'a>(MutexGuard<'a, State>);

impl Deref for VhostGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl DerefMut for VhostGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.0
    }
}

impl Drop for VhostGuard<'_> {
    fn drop(&mut self) {
        self.0.finish_operation();
    }
}

/// What the vhost knows of an open channel: where its deliveries go and what is
/// outstanding on it.
#[derive(Debug)]
pub struct OpenChannel {
    pub outbox: Arc<Outbox>,
    pub out: ChannelOut,
    /// The client announced `consumer_cancel_notify`.
    pub cancel_notify: bool,
    next_tag: u64,
    unacked: VecDeque<Unacked>,
    /// Channel-wide prefetch (`basic.qos` with `global = true`); 0 is unlimited.
    prefetch_global: u16,
    /// Prefetch given to consumers created from now on (`global = false`).
    prefetch_consumer: u16,
    /// `channel.flow` lets deliveries through.
    active: bool,
    /// Consumer tag → queue name.
    consumers: BTreeMap<Arc<str>, Arc<str>>,
    /// Queues to dispatch once the outbox has been written (see [`State::recover`]).
    deferred: Vec<Arc<str>>,
}

impl OpenChannel {
    pub fn new(outbox: Arc<Outbox>, out: ChannelOut, cancel_notify: bool) -> Self {
        Self {
            outbox,
            out,
            cancel_notify,
            next_tag: 1,
            unacked: VecDeque::new(),
            prefetch_global: 0,
            prefetch_consumer: 0,
            active: true,
            consumers: BTreeMap::new(),
            deferred: Vec::new(),
        }
    }

    fn has_credit(&self) -> bool {
        self.active
            && (self.prefetch_global == 0 || self.unacked.len() < usize::from(self.prefetch_global))
    }

    fn take_tag(&mut self) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        tag
    }

    /// Removes the unacknowledged deliveries an ack, nack or reject names.
    fn settle(&mut self, tag: u64, multiple: bool) -> Result<Settled, AmqpError> {
        if multiple {
            // As RabbitMQ: everything up to the tag (0: everything), no error if none.
            let end = if tag == 0 {
                self.unacked.len()
            } else {
                self.unacked.partition_point(|u| u.tag <= tag)
            };
            return Ok(Settled::Many(self.unacked.drain(..end).collect()));
        }
        // Consumers mostly settle in delivery order: the oldest first.
        let at = match self.unacked.front() {
            Some(oldest) if oldest.tag == tag => Ok(0),
            _ => self.unacked.binary_search_by_key(&tag, |u| u.tag),
        };
        at.ok()
            .and_then(|at| self.unacked.remove(at))
            .map(Settled::One)
            .ok_or_else(|| AmqpError::precondition_failed(format!("unknown delivery tag {tag}")))
    }
}

/// The deliveries one ack, nack or reject settled: one (without allocating), or many.
#[derive(Debug)]
enum Settled {
    One(Unacked),
    Many(Vec<Unacked>),
}

impl Settled {
    fn as_slice(&self) -> &[Unacked] {
        match self {
            Settled::One(one) => std::slice::from_ref(one),
            Settled::Many(many) => many,
        }
    }

    fn into_vec(self) -> Vec<Unacked> {
        match self {
            Settled::One(one) => vec![one],
            Settled::Many(many) => many,
        }
    }
}

/// A delivery awaiting acknowledgement.
#[derive(Debug)]
struct Unacked {
    tag: u64,
    queue: Arc<str>,
    queue_id: u64,
    /// `None` for messages fetched with `basic.get`.
    consumer: Option<Arc<str>>,
    msg: Arc<Message>,
    /// The message is in the store for this queue: settling it must be recorded.
    stored: bool,
    /// The message's deadline, restored if it is requeued.
    deadline: u64,
}

/// How `queue.declare` was asked.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// How `exchange.declare` was asked.
#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// How `basic.consume` was asked.
#[derive(Debug, Clone)]
pub struct ConsumeSpec {
    pub queue: String,
    pub tag: Arc<str>,
    pub no_ack: bool,
    pub exclusive: bool,
}

/// The result of routing one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Queued on this many queues.
    Queued(usize),
    /// No queue matched.
    Unroutable,
    /// At least one matching queue refused it (`x-overflow = reject-publish[-dlx]`): the
    /// publisher gets `basic.nack` (and no `basic.return`, even if mandatory).
    Rejected,
}

/// The locked state of the vhost.
#[derive(Debug, Default)]
pub struct State {
    pub(crate) exchanges: FastMap<Arc<str>, Exchange>,
    pub(crate) queues: FastMap<Arc<str>, Queue>,
    channels: FastMap<ChannelKey, OpenChannel>,
    pub(crate) next_queue_id: u64,
    /// Reused routing buffer.
    route_buf: Vec<Arc<str>>,
    /// Reused buffer of the queues an ack gave credit back to.
    touched_buf: Vec<Arc<str>>,
    /// Where durable topology and persistent messages go; `None` keeps them in memory.
    pub(crate) store: Option<Arc<Store>>,
    /// Message and queue expiry timers, and the clock.
    pub(crate) timers: Timers,
    /// Messages that died during this operation, to republish before unlocking.
    dead: Vec<DeadLetter>,
}

fn no_queue(name: &str) -> AmqpError {
    AmqpError::not_found(format!("no queue '{name}' in vhost '/'"))
}

fn no_exchange(name: &str) -> AmqpError {
    AmqpError::not_found(format!("no exchange '{name}' in vhost '/'"))
}

fn locked(name: &str) -> AmqpError {
    AmqpError::resource_locked(format!(
        "cannot obtain exclusive access to locked queue '{name}' in vhost '/'. It was declared exclusive by another connection"
    ))
}

fn inequivalent(
    what: &str,
    kind: &str,
    name: &str,
    received: impl std::fmt::Display,
    current: impl std::fmt::Display,
) -> AmqpError {
    AmqpError::precondition_failed(format!(
        "inequivalent arg '{what}' for {kind} '{name}' in vhost '/': received '{received}' but current is '{current}'"
    ))
}

/// Names the first argument that differs between two argument tables.
fn argument_difference(
    received: &FieldTable,
    current: &FieldTable,
) -> Option<(String, String, String)> {
    let show = |v: Option<&AMQPValue>| v.map_or_else(|| "none".to_owned(), |v| format!("{v:?}"));
    let keys = received.inner().keys().chain(current.inner().keys());
    for key in keys {
        let (r, c) = (received.inner().get(key), current.inner().get(key));
        if r != c {
            return Some((key.to_string(), show(r), show(c)));
        }
    }
    None
}

impl State {
    // ---- channels and connections ----

    pub fn open_channel(&mut self, key: ChannelKey, channel: OpenChannel) {
        self.channels.insert(key, channel);
    }

    /// Forgets a channel: its unacknowledged messages go back to their queues with
    /// `redelivered` set, and its consumers are cancelled.
    pub fn close_channel(&mut self, key: ChannelKey) {
        let Some(mut ch) = self.channels.remove(&key) else {
            return;
        };
        let unacked: Vec<Unacked> = ch.unacked.drain(..).collect();
        let consumers = std::mem::take(&mut ch.consumers);
        let mut touched = self.requeue(unacked);
        for (tag, queue) in consumers {
            self.remove_consumer(&queue, &tag);
            touched.push(queue);
        }
        self.dispatch_all(&mut touched);
    }

    /// Forgets a connection: its channels close and its exclusive queues are deleted.
    pub fn close_connection(&mut self, conn: ConnId) {
        let keys: Vec<ChannelKey> = self
            .channels
            .keys()
            .filter(|k| k.0 == conn)
            .copied()
            .collect();
        for key in keys {
            self.close_channel(key);
        }
        let exclusive: Vec<Arc<str>> = self
            .queues
            .values()
            .filter(|q| q.exclusive_owner == Some(conn))
            .map(|q| q.name.clone())
            .collect();
        for name in exclusive {
            self.remove_queue(&name);
        }
    }

    /// Resumes deliveries to a connection whose outbox has drained.
    pub fn resume_connection(&mut self, conn: ConnId) {
        let mut queues = Vec::new();
        for (_, ch) in self.channels.iter_mut().filter(|(k, _)| k.0 == conn) {
            queues.extend(ch.consumers.values().cloned());
            queues.append(&mut ch.deferred);
        }
        self.dispatch_all(&mut queues);
    }

    fn channel(&mut self, key: ChannelKey) -> &mut OpenChannel {
        self.channels
            .get_mut(&key)
            .expect("method on a channel the vhost does not know")
    }
}

/// Schedules the expiry of `q`'s head message, unless an earlier timer is pending.
pub(crate) fn arm_head_expiry(q: &mut Queue, timers: &mut Timers) {
    let Some(deadline) = q.head_deadline() else {
        return;
    };
    if q.head_timer.is_some_and(|pending| pending <= deadline) {
        return;
    }
    q.head_timer = Some(deadline);
    timers.schedule(Due {
        deadline,
        queue_id: q.id,
        kind: TimerKind::Head,
        queue: q.name.clone(),
    });
}

/// Schedules the `x-expires` check of `q` at `q.expires_at`, unless one is pending.
fn arm_queue_expiry(q: &mut Queue, timers: &mut Timers) {
    if q.expiry_timer || q.expires_at == NEVER {
        return;
    }
    q.expiry_timer = true;
    timers.schedule(Due {
        deadline: q.expires_at,
        queue_id: q.id,
        kind: TimerKind::Queue,
        queue: q.name.clone(),
    });
}

/// Records a use of `q` (declare, `basic.get`, last consumer gone): with `x-expires`
/// and no consumers, the queue now expires that long from now.
pub(crate) fn touch(q: &mut Queue, timers: &mut Timers) {
    let Some(ms) = q.args.expires_ms else {
        return;
    };
    if q.consumers.is_empty() {
        q.expires_at = timers.now().saturating_add(ms);
        arm_queue_expiry(q, timers);
    }
}
