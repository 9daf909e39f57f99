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
//! method gets this without remembering to.

use crate::arguments::{Overflow, QueueArgs};
use crate::codec::delivery::{ChannelOut, Content, Origin, put_deliver, put_get_ok};
use crate::codec::method::put_method;
use crate::confirm::Confirm;
use crate::deadletter::{self, DeadLetter, Reason};
use crate::error::AmqpError;
use crate::exchange::{Binding, Exchange, ExchangeKind};
use crate::expiry::{Due, NEVER, TimerKind, Timers, message_deadline};
use crate::message::Message;
use crate::outbox::Outbox;
use crate::queue::{ChannelKey, ConnId, Consumer, Queue, Queued};
use crate::store::{Recovered, Store};
use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::{AMQPValue, FieldTable};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

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
    fn settle(&mut self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, AmqpError> {
        if multiple {
            // As RabbitMQ: everything up to the tag (0: everything), no error if none.
            let end = if tag == 0 {
                self.unacked.len()
            } else {
                self.unacked.partition_point(|u| u.tag <= tag)
            };
            return Ok(self.unacked.drain(..end).collect());
        }
        let at = self
            .unacked
            .binary_search_by_key(&tag, |u| u.tag)
            .map_err(|_| AmqpError::precondition_failed(format!("unknown delivery tag {tag}")))?;
        Ok(self.unacked.remove(at).into_iter().collect())
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
    pub(crate) exchanges: HashMap<Arc<str>, Exchange>,
    pub(crate) queues: HashMap<Arc<str>, Queue>,
    channels: HashMap<ChannelKey, OpenChannel>,
    pub(crate) next_queue_id: u64,
    /// Reused routing buffer.
    route_buf: Vec<Arc<str>>,
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
        self.dispatch_all(touched);
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
        self.dispatch_all(queues);
    }

    fn channel(&mut self, key: ChannelKey) -> &mut OpenChannel {
        self.channels
            .get_mut(&key)
            .expect("method on a channel the vhost does not know")
    }

    // ---- exchanges ----

    pub fn declare_exchange(&mut self, spec: ExchangeSpec) -> Result<(), AmqpError> {
        if let Some(ex) = self.exchanges.get(spec.name.as_str()) {
            if spec.passive {
                return Ok(());
            }
            if ex.kind.as_str() != spec.kind {
                return Err(inequivalent(
                    "type",
                    "exchange",
                    &spec.name,
                    &spec.kind,
                    ex.kind.as_str(),
                ));
            }
            if ex.durable != spec.durable {
                return Err(inequivalent(
                    "durable",
                    "exchange",
                    &spec.name,
                    spec.durable,
                    ex.durable,
                ));
            }
            if ex.auto_delete != spec.auto_delete {
                return Err(inequivalent(
                    "auto_delete",
                    "exchange",
                    &spec.name,
                    spec.auto_delete,
                    ex.auto_delete,
                ));
            }
            if ex.internal != spec.internal {
                return Err(inequivalent(
                    "internal",
                    "exchange",
                    &spec.name,
                    spec.internal,
                    ex.internal,
                ));
            }
            if let Some((arg, r, c)) = argument_difference(&spec.arguments, &ex.arguments) {
                return Err(inequivalent(&arg, "exchange", &spec.name, r, c));
            }
            return Ok(());
        }
        if spec.passive {
            return Err(no_exchange(&spec.name));
        }
        if spec.name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        let kind = ExchangeKind::parse(&spec.kind).ok_or_else(|| {
            AmqpError::command_invalid(format!(
                "unknown exchange type '{}' (known: direct, fanout, topic, headers)",
                spec.kind
            ))
        })?;
        let ex = Exchange::new(
            &spec.name,
            kind,
            spec.durable,
            spec.auto_delete,
            spec.internal,
            spec.arguments,
        );
        let durable = ex.durable;
        self.exchanges.insert(ex.name.clone(), ex);
        if durable {
            self.topology_changed();
        }
        Ok(())
    }

    pub fn delete_exchange(&mut self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "operation not permitted on the predeclared exchange '{name}'"
            )));
        }
        let Some(ex) = self.exchanges.get(name) else {
            return Ok(()); // deleting what is not there succeeds, as in RabbitMQ
        };
        if if_unused && ex.has_bindings() {
            return Err(AmqpError::precondition_failed(format!(
                "exchange '{name}' in vhost '/' in use"
            )));
        }
        if self.exchanges.remove(name).is_some_and(|ex| ex.durable) {
            self.topology_changed();
        }
        Ok(())
    }

    // ---- queues ----

    /// Declares (or checks) a queue; returns its name, message count and consumer count.
    pub fn declare_queue(
        &mut self,
        conn: ConnId,
        spec: QueueSpec,
    ) -> Result<(Arc<str>, u32, u32), AmqpError> {
        // As RabbitMQ: invalid arguments are refused before looking for the queue.
        let args = if spec.passive {
            QueueArgs::default()
        } else {
            QueueArgs::parse(&spec.name, &spec.arguments)?
        };
        let State { queues, timers, .. } = &mut *self;
        if let Some(q) = queues.get_mut(spec.name.as_str()) {
            if !q.accessible_by(conn) {
                return Err(locked(&spec.name));
            }
            if !spec.passive {
                let differs = |what, r: bool, c: bool| {
                    (r != c).then(|| inequivalent(what, "queue", &spec.name, r, c))
                };
                if let Some(err) = differs("durable", spec.durable, q.durable)
                    .or_else(|| differs("exclusive", spec.exclusive, q.exclusive_owner.is_some()))
                    .or_else(|| differs("auto_delete", spec.auto_delete, q.auto_delete))
                {
                    return Err(err);
                }
                if let Some((arg, r, c)) = argument_difference(&spec.arguments, &q.arguments) {
                    return Err(inequivalent(&arg, "queue", &spec.name, r, c));
                }
            }
            touch(q, timers);
            return Ok((q.name.clone(), q.message_count(), q.consumer_count()));
        }
        if spec.passive {
            return Err(no_queue(&spec.name));
        }
        if spec.name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        let name: Arc<str> = spec.name.as_str().into();
        self.create_queue(name, conn, spec, args)
    }

    /// Declares a queue with a server-generated `amq.gen-…` name.
    pub fn declare_server_named_queue(
        &mut self,
        conn: ConnId,
        spec: QueueSpec,
    ) -> Result<(Arc<str>, u32, u32), AmqpError> {
        let args = QueueArgs::parse("", &spec.arguments)?;
        loop {
            let name: Arc<str> = format!(
                "{}{}",
                crate::names::SERVER_NAMED_QUEUE_PREFIX,
                crate::names::random_token()
            )
            .into();
            if !self.queues.contains_key(&name) {
                return self.create_queue(name, conn, spec, args);
            }
        }
    }

    fn create_queue(
        &mut self,
        name: Arc<str>,
        conn: ConnId,
        spec: QueueSpec,
        args: QueueArgs,
    ) -> Result<(Arc<str>, u32, u32), AmqpError> {
        self.next_queue_id += 1;
        let mut queue = Queue::new(
            name.clone(),
            self.next_queue_id,
            spec.durable,
            spec.exclusive.then_some(conn),
            spec.auto_delete,
            spec.arguments,
            args,
        );
        touch(&mut queue, &mut self.timers);
        let durable = queue.is_persisted();
        self.queues.insert(name.clone(), queue);
        if durable {
            self.topology_changed();
        }
        Ok((name, 0, 0))
    }

    fn queue_for(&mut self, conn: ConnId, name: &str) -> Result<&mut Queue, AmqpError> {
        let q = self.queues.get_mut(name).ok_or_else(|| no_queue(name))?;
        if !q.accessible_by(conn) {
            return Err(locked(name));
        }
        Ok(q)
    }

    pub fn bind_queue(
        &mut self,
        conn: ConnId,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let q = self.queue_for(conn, queue)?;
        let (queue, persisted) = (q.name.clone(), q.is_persisted());
        let ex = self
            .exchanges
            .get_mut(exchange)
            .ok_or_else(|| no_exchange(exchange))?;
        ex.bind(Binding {
            queue,
            routing_key: routing_key.into(),
            arguments,
        });
        if persisted && ex.durable {
            self.topology_changed();
        }
        Ok(())
    }

    pub fn unbind_queue(
        &mut self,
        conn: ConnId,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let q = self.queue_for(conn, queue)?;
        let (queue, persisted) = (q.name.clone(), q.is_persisted());
        let ex = self
            .exchanges
            .get_mut(exchange)
            .ok_or_else(|| no_exchange(exchange))?;
        let binding = Binding {
            queue,
            routing_key: routing_key.into(),
            arguments,
        };
        let durable = ex.durable;
        let removed = ex.unbind(&binding);
        if removed && ex.auto_delete && !ex.has_bindings() {
            let name = ex.name.clone();
            self.exchanges.remove(&name);
        }
        if removed && persisted && durable {
            self.topology_changed();
        }
        Ok(())
    }

    pub fn purge_queue(&mut self, conn: ConnId, name: &str) -> Result<u32, AmqpError> {
        let q = self.queue_for(conn, name)?;
        let (count, stored) = q.clear();
        let (queue_id, persisted) = (q.id, q.is_persisted());
        self.forget_stored_ids(queue_id, persisted, stored);
        Ok(count)
    }

    pub fn delete_queue(
        &mut self,
        conn: ConnId,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u32, AmqpError> {
        let Some(q) = self.queues.get(name) else {
            return Ok(0); // deleting what is not there succeeds, as in RabbitMQ
        };
        if !q.accessible_by(conn) {
            return Err(locked(name));
        }
        if if_unused && !q.consumers.is_empty() {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{name}' in vhost '/' in use"
            )));
        }
        if if_empty && !q.is_empty() {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{name}' in vhost '/' is not empty"
            )));
        }
        Ok(self.remove_queue(name))
    }

    /// Removes a queue and its bindings; its consumers are told with `basic.cancel`.
    fn remove_queue(&mut self, name: &str) -> u32 {
        let Some(mut q) = self.queues.remove(name) else {
            return 0;
        };
        for consumer in &q.consumers {
            let Some(ch) = self.channels.get_mut(&consumer.channel) else {
                continue;
            };
            ch.consumers.remove(&consumer.tag);
            if ch.cancel_notify {
                let cancel = AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: consumer.tag.as_ref().into(),
                    nowait: true,
                }));
                let channel = ch.out.channel;
                ch.outbox.push(|out| put_method(out, channel, &cancel));
            }
        }
        let mut emptied = Vec::new();
        for ex in self.exchanges.values_mut() {
            let had = ex.has_bindings();
            ex.unbind_queue(name);
            if had && ex.auto_delete && !ex.has_bindings() {
                emptied.push(ex.name.clone());
            }
        }
        for ex in emptied {
            self.exchanges.remove(&ex);
        }
        let (count, stored) = q.clear();
        self.forget_stored_ids(q.id, q.is_persisted(), stored);
        if q.is_persisted() {
            self.topology_changed();
        }
        count
    }

    // ---- consumers ----

    /// Checks that the channel may start consuming `queue`.
    pub fn check_consumable(
        &mut self,
        key: ChannelKey,
        queue: &str,
        exclusive: bool,
    ) -> Result<(), AmqpError> {
        let q = self.queue_for(key.0, queue)?;
        if q.consumers.iter().any(|c| c.exclusive) {
            return Err(AmqpError::access_refused(format!(
                "queue '{queue}' in vhost '/' in exclusive use"
            )));
        }
        if exclusive && !q.consumers.is_empty() {
            return Err(AmqpError::access_refused(format!(
                "cannot obtain exclusive access to queue '{queue}' in vhost '/': it has consumers"
            )));
        }
        Ok(())
    }

    /// Adds a consumer (after [`State::check_consumable`]) and starts delivering to it.
    pub fn consume(&mut self, key: ChannelKey, spec: ConsumeSpec) -> Result<(), AmqpError> {
        self.check_consumable(key, &spec.queue, spec.exclusive)?;
        let prefetch = self.channel(key).prefetch_consumer;
        let q = self.queue_for(key.0, &spec.queue)?;
        q.consumers.push(Consumer {
            tag: spec.tag.clone(),
            channel: key,
            no_ack: spec.no_ack,
            exclusive: spec.exclusive,
            prefetch,
            unacked: 0,
        });
        q.had_consumer = true;
        let queue = q.name.clone();
        self.channel(key).consumers.insert(spec.tag, queue.clone());
        self.dispatch(&queue);
        Ok(())
    }

    pub fn has_consumer(&mut self, key: ChannelKey, tag: &str) -> bool {
        self.channel(key).consumers.contains_key(tag)
    }

    /// Cancels a consumer; unknown tags are ignored, as the spec asks.
    pub fn cancel(&mut self, key: ChannelKey, tag: &str) {
        if let Some(queue) = self.channel(key).consumers.remove(tag) {
            self.remove_consumer(&queue, tag);
        }
    }

    fn remove_consumer(&mut self, queue: &str, tag: &str) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        q.consumers.retain(|c| &*c.tag != tag);
        if q.auto_delete && q.had_consumer && q.consumers.is_empty() {
            self.remove_queue(queue);
        } else {
            touch(q, &mut self.timers);
        }
    }

    pub fn qos(&mut self, key: ChannelKey, prefetch_count: u16, global: bool) {
        let ch = self.channel(key);
        if global {
            ch.prefetch_global = prefetch_count;
        } else {
            ch.prefetch_consumer = prefetch_count;
        }
        let queues: Vec<Arc<str>> = ch.consumers.values().cloned().collect();
        self.dispatch_all(queues);
    }

    pub fn flow(&mut self, key: ChannelKey, active: bool) {
        let ch = self.channel(key);
        ch.active = active;
        let queues: Vec<Arc<str>> = ch.consumers.values().cloned().collect();
        self.dispatch_all(queues);
    }

    // ---- publishing ----

    /// Routes a message through `exchange` (plus the `CC`/`BCC` keys) and queues it with
    /// its per-message TTL `expiration_ms`. An unroutable message is dropped; the caller
    /// returns it when it was mandatory.
    pub fn publish(
        &mut self,
        exchange: &str,
        extra_keys: &[String],
        headers: Option<&FieldTable>,
        expiration_ms: Option<u64>,
        msg: Arc<Message>,
        confirm: Option<Confirm>,
    ) -> Result<(Routed, Option<Confirm>), AmqpError> {
        let ex = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| no_exchange(exchange))?;
        if ex.internal {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '/'"
            )));
        }
        let mut targets = std::mem::take(&mut self.route_buf);
        self.route(
            exchange,
            &msg.routing_key,
            extra_keys,
            headers,
            &mut targets,
        );
        let routed = targets.len();
        let (rejected, confirm) = self.place(&targets, &msg, expiration_ms, confirm);
        self.route_buf = targets;
        let routed = if routed == 0 {
            Routed::Unroutable
        } else if rejected {
            Routed::Rejected
        } else {
            Routed::Queued(routed)
        };
        Ok((routed, confirm))
    }

    /// The queues `exchange` routes `routing_key` and `extra_keys` to, deduplicated, into
    /// `targets` (cleared first). A missing exchange routes nowhere.
    fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        extra_keys: &[String],
        headers: Option<&FieldTable>,
        targets: &mut Vec<Arc<str>>,
    ) {
        targets.clear();
        let Some(ex) = self.exchanges.get(exchange) else {
            return;
        };
        for key in std::iter::once(routing_key).chain(extra_keys.iter().map(String::as_str)) {
            if exchange.is_empty() {
                if let Some(q) = self.queues.get(key) {
                    targets.push(q.name.clone());
                }
            } else {
                ex.route(key, headers, targets);
            }
        }
        if targets.len() > 1 {
            targets.sort_unstable();
            targets.dedup();
        }
    }

    /// Appends a message to queue `name`; `false` if the queue refused it because it is
    /// full and overflows with `reject-publish[-dlx]`.
    fn enqueue(&mut self, name: &str, msg: &Arc<Message>, expiration_ms: Option<u64>) -> bool {
        let State {
            queues,
            timers,
            dead,
            store,
            ..
        } = self;
        let Some(q) = queues.get_mut(name) else {
            return true;
        };
        let spill = store.is_some() && q.is_persisted();
        if let Some(limits) = &q.args.limits {
            let overflow = limits.overflow;
            if overflow != Overflow::DropHead && q.would_overflow(msg.body.len()) {
                if overflow == Overflow::RejectPublishDlx {
                    q.dead_letter(msg.clone(), Reason::MaxLen, dead);
                }
                return false;
            }
        }
        let deadline = match (q.args.message_ttl_ms, expiration_ms) {
            (None, None) => NEVER,
            (ttl, expiration) => message_deadline(timers.now(), ttl, expiration),
        };
        q.push(
            Queued {
                msg: msg.clone(),
                redelivered: false,
                deadline,
            },
            spill,
        );
        true
    }

    // ---- expiry and dead letters ----

    /// The timer heap (for the [`crate::expiry::run`] task).
    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    /// Handles every timer that is due: expires queue heads and unused queues.
    pub fn run_timers(&mut self) {
        let now = self.timers.now();
        while let Some(due) = self.timers.pop_due(now) {
            let Some(q) = self
                .queues
                .get_mut(&due.queue)
                .filter(|q| q.id == due.queue_id)
            else {
                continue;
            };
            match due.kind {
                TimerKind::Head => {
                    if q.head_timer == Some(due.deadline) {
                        q.head_timer = None;
                    }
                    let name = q.name.clone();
                    self.dispatch(&name);
                }
                TimerKind::Queue => {
                    q.expiry_timer = false;
                    if !q.consumers.is_empty() {
                        continue; // in use; the last consumer to go re-arms it
                    }
                    if q.expires_at <= now {
                        let name = q.name.clone();
                        tracing::debug!(queue = %name, "unused queue expired (x-expires)");
                        self.remove_queue(&name);
                    } else {
                        arm_queue_expiry(q, &mut self.timers);
                    }
                }
            }
        }
    }

    /// Called when the lock is released: republishes dead letters, forgets "now".
    fn finish_operation(&mut self) {
        if !self.dead.is_empty() {
            self.republish_dead_letters();
        }
        self.timers.forget_now();
    }

    /// Publishes every collected dead letter to its dead-letter exchange, in the order
    /// the messages died, until no more die. Terminates: a dead letter that would go
    /// back to a queue it died in without a rejection on the way is dropped
    /// ([`deadletter::is_cycle`]).
    /// Queues `msg` on the routed `targets`, writes it to the store for the persisted
    /// ones (it is written once, however many they are), and dispatches. Returns whether
    /// a queue refused it (`x-overflow`), and the confirm unless the store took it.
    fn place(
        &mut self,
        targets: &[Arc<str>],
        msg: &Arc<Message>,
        expiration_ms: Option<u64>,
        confirm: Option<Confirm>,
    ) -> (bool, Option<Confirm>) {
        let mut durable = Vec::new();
        let mut rejected = false;
        for name in targets {
            if !self.enqueue(name, msg, expiration_ms) {
                rejected = true;
            } else if let Some(q) = self
                .queues
                .get(name)
                .filter(|q| msg.persistent && q.is_persisted())
            {
                durable.push(q.id);
            }
        }
        // Written before any delivery, so deliver records follow the enqueue record.
        let confirm = match &self.store {
            Some(store) if !durable.is_empty() => {
                // A refusing queue makes the confirm a nack, which need not wait.
                let (waits, now) = if rejected {
                    (None, confirm)
                } else {
                    (confirm, None)
                };
                store.enqueue(msg, durable, waits);
                now
            }
            _ => confirm,
        };
        for name in targets {
            self.dispatch(name);
            if let Some(q) = self.queues.get_mut(name) {
                q.page_out();
            }
        }
        (rejected, confirm)
    }

    fn republish_dead_letters(&mut self) {
        let now_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut targets = Vec::new();
        while !self.dead.is_empty() {
            for dead in std::mem::take(&mut self.dead) {
                let Some(copy) = deadletter::make_message(&dead, now_secs) else {
                    tracing::warn!(queue = %dead.queue, "dead letter with an undecodable header dropped");
                    continue;
                };
                self.route(
                    &dead.target.exchange,
                    &copy.msg.routing_key,
                    &copy.extra_keys,
                    Some(&copy.headers),
                    &mut targets,
                );
                if dead.reason != Reason::Rejected {
                    targets.retain(|q| {
                        let cycle = deadletter::is_cycle(&copy.headers, q);
                        if cycle {
                            tracing::debug!(queue = %q, "dead letter dropped: dead-letter cycle without a rejection");
                        }
                        !cycle
                    });
                }
                self.place(&targets, &copy.msg, None, None);
            }
        }
    }

    // ---- deliveries ----

    fn dispatch_all(&mut self, mut queues: Vec<Arc<str>>) {
        queues.sort_unstable();
        queues.dedup();
        for q in queues {
            self.dispatch(&q);
        }
    }

    /// Hands ready messages of `queue` to its consumers, round robin, as long as some
    /// consumer has credit; then applies `drop-head` limits, expires what is due at the
    /// head and schedules the head's expiry timer.
    fn dispatch(&mut self, queue: &str) {
        let State {
            queues,
            channels,
            store,
            timers,
            dead,
            ..
        } = self;
        let Some(q) = queues.get_mut(queue) else {
            return;
        };
        let store = store.as_deref().filter(|_| q.is_persisted());
        while !q.is_empty() && !q.consumers.is_empty() {
            if q.head_deadline().is_some() {
                q.expire_head(timers.now(), false, dead, store);
                if q.is_empty() {
                    break;
                }
            }
            let n = q.consumers.len();
            let Some(idx) = (0..n).map(|i| (q.next_consumer + i) % n).find(|&i| {
                let c = &q.consumers[i];
                let Some(ch) = channels.get(&c.channel) else {
                    return false;
                };
                if ch.outbox.is_full() {
                    ch.outbox.mark_starved();
                    return false;
                }
                c.has_credit() && (c.no_ack || ch.has_credit()) && ch.active
            }) else {
                break;
            };
            q.next_consumer = (idx + 1) % n;
            let Some(item) = q.pop_front(store) else {
                break;
            };
            let consumer = &mut q.consumers[idx];
            let Some(ch) = channels.get_mut(&consumer.channel) else {
                break;
            };
            let stored = store.zip(item.msg.stored());
            if let Some((store, id)) = stored {
                if consumer.no_ack {
                    store.removed(q.id, id);
                } else {
                    store.delivered(q.id, id);
                }
            }
            let tag = ch.take_tag();
            let out = ch.out;
            ch.outbox.push(|buf| {
                put_deliver(
                    buf,
                    out,
                    &consumer.tag,
                    tag,
                    item.redelivered,
                    Origin {
                        exchange: &item.msg.exchange,
                        routing_key: &item.msg.routing_key,
                    },
                    Content {
                        header: &item.msg.header,
                        body: &item.msg.body,
                    },
                )
            });
            if !consumer.no_ack {
                consumer.unacked += 1;
                ch.unacked.push_back(Unacked {
                    tag,
                    queue: q.name.clone(),
                    queue_id: q.id,
                    consumer: Some(consumer.tag.clone()),
                    msg: item.msg,
                    stored: stored.is_some(),
                    deadline: item.deadline,
                });
            }
        }
        if q.args.limits.is_some() {
            q.trim_to_limits(dead, store);
        }
        if q.head_deadline().is_some() {
            q.expire_head(timers.now(), true, dead, store);
            arm_head_expiry(q, timers);
        }
    }

    /// `basic.get`: hands one message to the channel, or says the queue is empty.
    pub fn get(&mut self, key: ChannelKey, queue: &str, no_ack: bool) -> Result<bool, AmqpError> {
        self.queue_for(key.0, queue)?;
        let State {
            queues,
            timers,
            dead,
            store,
            ..
        } = &mut *self;
        let Some(q) = queues.get_mut(queue) else {
            return Err(no_queue(queue));
        };
        let persisted = q.is_persisted();
        let store = store.clone().filter(|_| persisted);
        touch(q, timers);
        if q.head_deadline().is_some() {
            q.expire_head(timers.now(), true, dead, store.as_deref());
        }
        let Some(item) = q.pop_front(store.as_deref()) else {
            return Ok(false);
        };
        arm_head_expiry(q, timers);
        let remaining = q.message_count();
        let (name, id) = (q.name.clone(), q.id);
        let stored = store.as_ref().zip(item.msg.stored());
        if let Some((store, msg)) = stored {
            if no_ack {
                store.removed(id, msg);
            } else {
                store.delivered(id, msg);
            }
        }
        let stored = stored.is_some();
        let ch = self.channel(key);
        let tag = ch.take_tag();
        let out = ch.out;
        ch.outbox.push(|buf| {
            put_get_ok(
                buf,
                out,
                tag,
                item.redelivered,
                Origin {
                    exchange: &item.msg.exchange,
                    routing_key: &item.msg.routing_key,
                },
                remaining,
                Content {
                    header: &item.msg.header,
                    body: &item.msg.body,
                },
            )
        });
        if !no_ack {
            ch.unacked.push_back(Unacked {
                tag,
                queue: name,
                queue_id: id,
                consumer: None,
                msg: item.msg,
                stored,
                deadline: item.deadline,
            });
        }
        Ok(true)
    }

    /// `basic.ack`.
    pub fn ack(&mut self, key: ChannelKey, tag: u64, multiple: bool) -> Result<(), AmqpError> {
        let settled = self.channel(key).settle(tag, multiple)?;
        let touched = self.release_credit(key, &settled);
        self.forget_settled(&settled);
        self.dispatch_all(touched);
        Ok(())
    }

    /// `basic.nack` and `basic.reject`: requeued messages go back to the head of their
    /// queue marked redelivered; the others are dead-lettered (reason `rejected`) if
    /// their queue has a dead-letter exchange, else dropped.
    pub fn nack(
        &mut self,
        key: ChannelKey,
        tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), AmqpError> {
        let settled = self.channel(key).settle(tag, multiple)?;
        let mut touched = self.release_credit(key, &settled);
        if requeue {
            touched.extend(self.requeue(settled));
        } else {
            self.forget_settled(&settled);
            for u in settled {
                if let Some(q) = self.queues.get(&u.queue).filter(|q| q.id == u.queue_id) {
                    q.dead_letter(u.msg, Reason::Rejected, &mut self.dead);
                }
            }
        }
        self.dispatch_all(touched);
        Ok(())
    }

    /// `basic.recover`: every unacknowledged message of the channel is requeued. The
    /// redeliveries wait until `recover-ok` has been written: clients (lapin) discard
    /// deliveries they had buffered when `recover-ok` arrives.
    pub fn recover(&mut self, key: ChannelKey) {
        let settled: Vec<Unacked> = self.channel(key).unacked.drain(..).collect();
        let mut touched = self.release_credit(key, &settled);
        touched.extend(self.requeue(settled));
        let ch = self.channel(key);
        ch.deferred.extend(touched);
        ch.outbox.mark_starved();
    }

    /// Gives consumers back the credit their settled deliveries held; returns the
    /// queues that may now deliver more.
    fn release_credit(&mut self, key: ChannelKey, settled: &[Unacked]) -> Vec<Arc<str>> {
        let mut touched = Vec::new();
        for u in settled {
            let Some(q) = self.queues.get_mut(&u.queue) else {
                continue;
            };
            if q.id != u.queue_id {
                continue;
            }
            if let Some(c) = u.consumer.as_deref().and_then(|tag| q.consumer_mut(tag)) {
                c.unacked = c.unacked.saturating_sub(1);
            }
            touched.push(q.name.clone());
        }
        // A channel-wide prefetch frees credit for every queue consumed on the channel.
        let ch = self.channel(key);
        if ch.prefetch_global != 0 {
            touched.extend(ch.consumers.values().cloned());
        }
        touched
    }

    /// Puts settled deliveries back into their queues (if the queue still exists), with
    /// the deadlines they had.
    fn requeue(&mut self, settled: Vec<Unacked>) -> Vec<Arc<str>> {
        let mut by_queue: Vec<(Arc<str>, u64, Vec<Unacked>)> = Vec::new();
        for u in settled {
            match by_queue
                .iter_mut()
                .find(|(name, id, _)| *name == u.queue && *id == u.queue_id)
            {
                Some((_, _, entries)) => entries.push(u),
                None => by_queue.push((u.queue.clone(), u.queue_id, vec![u])),
            }
        }
        let mut touched = Vec::new();
        for (name, id, entries) in by_queue {
            match self.queues.get_mut(&name).filter(|q| q.id == id) {
                Some(q) => {
                    q.requeue_front(entries.into_iter().map(|u| (u.msg, u.deadline)));
                    touched.push(name);
                }
                // The queue is gone: its messages leave the store with it.
                None => self.forget_settled(&entries),
            }
        }
        touched
    }

    /// Records in the store that settled deliveries left their queues for good.
    fn forget_settled(&self, settled: &[Unacked]) {
        let Some(store) = &self.store else { return };
        for u in settled.iter().filter(|u| u.stored) {
            if let Some(id) = u.msg.stored() {
                store.removed(u.queue_id, id);
            }
        }
    }
}

/// Schedules the expiry of `q`'s head message, unless an earlier timer is pending.
fn arm_head_expiry(q: &mut Queue, timers: &mut Timers) {
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
fn touch(q: &mut Queue, timers: &mut Timers) {
    let Some(ms) = q.args.expires_ms else {
        return;
    };
    if q.consumers.is_empty() {
        q.expires_at = timers.now().saturating_add(ms);
        arm_queue_expiry(q, timers);
    }
}
