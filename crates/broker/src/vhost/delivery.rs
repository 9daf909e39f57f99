//! Consumers, publishing, expiry and dead letters, and deliveries: everything that
//! moves messages.

use super::*;

/// Timer entries allowed beyond two per queue before stale ones are swept.
const STALE_TIMERS_SLACK: usize = 1024;
use std::time::{SystemTime, UNIX_EPOCH};

impl State {
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
    /// Cancels a consumer; returns whether that deleted a persisted (auto-delete) queue.
    pub fn cancel(&mut self, key: ChannelKey, tag: &str) -> bool {
        match self.channel(key).consumers.remove(tag) {
            Some(queue) => self.remove_consumer(&queue, tag),
            None => false,
        }
    }

    /// Removes a consumer from `queue`, and an auto-delete queue with its last consumer;
    /// returns whether a persisted queue was deleted.
    pub(super) fn remove_consumer(&mut self, queue: &str, tag: &str) -> bool {
        let Some(q) = self.queues.get_mut(queue) else {
            return false;
        };
        q.consumers.retain(|c| &*c.tag != tag);
        if q.auto_delete && q.had_consumer && q.consumers.is_empty() {
            let persisted = q.is_persisted();
            self.remove_queue(queue);
            persisted
        } else {
            touch(q, &mut self.timers);
            false
        }
    }

    pub fn qos(&mut self, key: ChannelKey, prefetch_count: u16, global: bool) {
        let ch = self.channel(key);
        if global {
            ch.prefetch_global = prefetch_count;
        } else {
            ch.prefetch_consumer = prefetch_count;
        }
        let mut queues: Vec<Arc<str>> = ch.consumers.values().cloned().collect();
        self.dispatch_all(&mut queues);
    }

    pub fn flow(&mut self, key: ChannelKey, active: bool) {
        let ch = self.channel(key);
        ch.active = active;
        let mut queues: Vec<Arc<str>> = ch.consumers.values().cloned().collect();
        self.dispatch_all(&mut queues);
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
        self.route(ex, &msg.routing_key, extra_keys, headers, &mut targets);
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

    /// The queues `ex` routes `routing_key` and `extra_keys` to, deduplicated, into
    /// `targets` (cleared first).
    pub(super) fn route(
        &self,
        ex: &Exchange,
        routing_key: &str,
        extra_keys: &[String],
        headers: Option<&FieldTable>,
        targets: &mut Vec<Arc<str>>,
    ) {
        targets.clear();
        for key in std::iter::once(routing_key).chain(extra_keys.iter().map(String::as_str)) {
            if ex.name.is_empty() {
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
    pub(super) fn enqueue(
        &mut self,
        name: &str,
        msg: &Arc<Message>,
        expiration_ms: Option<u64>,
    ) -> bool {
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
    pub(super) fn finish_operation(&mut self) {
        if !self.dead.is_empty() {
            self.republish_dead_letters();
        }
        if self.timers.len() > STALE_TIMERS_SLACK + 2 * self.queues.len() {
            self.drop_stale_timers();
        }
        self.timers.forget_now();
        if let Some(store) = &self.store
            && let Some(segment) = store.compaction_wanted()
        {
            self.relocate_segment(store, segment);
        }
    }

    /// Removes timer entries nothing waits for any more (an earlier head deadline
    /// replaced them, or their queue is gone), so the heap stays proportional to the
    /// queues however clients play with expirations.
    fn drop_stale_timers(&mut self) {
        let queues = &self.queues;
        self.timers.retain(|due| {
            queues
                .get(&due.queue)
                .filter(|q| q.id == due.queue_id)
                .is_some_and(|q| match due.kind {
                    TimerKind::Head => q.head_timer == Some(due.deadline),
                    TimerKind::Queue => q.expiry_timer,
                })
        });
    }

    /// Publishes every collected dead letter to its dead-letter exchange, in the order
    /// the messages died, until no more die. Terminates: a dead letter that would go
    /// back to a queue it died in without a rejection on the way is dropped
    /// ([`deadletter::is_cycle`]).
    /// Queues `msg` on the routed `targets`, writes it to the store for the persisted
    /// ones (it is written once, however many they are), and dispatches. Returns whether
    /// a queue refused it (`x-overflow`), and the confirm unless the store took it.
    pub(super) fn place(
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

    pub(super) fn republish_dead_letters(&mut self) {
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
                targets.clear();
                if let Some(ex) = self.exchanges.get(&dead.target.exchange) {
                    self.route(
                        ex,
                        &copy.msg.routing_key,
                        &copy.extra_keys,
                        Some(&copy.headers),
                        &mut targets,
                    );
                }
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

    /// [`Self::dispatch`] for each of `queues` once; leaves `queues` empty.
    pub(super) fn dispatch_all(&mut self, queues: &mut Vec<Arc<str>>) {
        queues.sort_unstable();
        queues.dedup();
        for q in queues.drain(..) {
            self.dispatch(&q);
        }
    }

    /// Hands ready messages of `queue` to its consumers, round robin, as long as some
    /// consumer has credit; then applies `drop-head` limits, expires what is due at the
    /// head and schedules the head's expiry timer.
    pub(super) fn dispatch(&mut self, queue: &str) {
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
        let mut touched = std::mem::take(&mut self.touched_buf);
        self.release_credit(key, settled.as_slice(), &mut touched);
        self.forget_settled(settled.as_slice());
        drop(settled);
        self.dispatch_all(&mut touched);
        self.touched_buf = touched;
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
        let settled = self.channel(key).settle(tag, multiple)?.into_vec();
        let mut touched = Vec::new();
        self.release_credit(key, &settled, &mut touched);
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
        self.dispatch_all(&mut touched);
        Ok(())
    }

    /// `basic.recover`: every unacknowledged message of the channel is requeued. The
    /// redeliveries wait until `recover-ok` has been written: clients (lapin) discard
    /// deliveries they had buffered when `recover-ok` arrives.
    pub fn recover(&mut self, key: ChannelKey) {
        let settled: Vec<Unacked> = self.channel(key).unacked.drain(..).collect();
        let mut touched = Vec::new();
        self.release_credit(key, &settled, &mut touched);
        touched.extend(self.requeue(settled));
        let ch = self.channel(key);
        ch.deferred.extend(touched);
        ch.outbox.mark_starved();
    }

    /// Gives consumers back the credit their settled deliveries held; adds the queues
    /// that may now deliver more to `touched`.
    pub(super) fn release_credit(
        &mut self,
        key: ChannelKey,
        settled: &[Unacked],
        touched: &mut Vec<Arc<str>>,
    ) {
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
    }

    /// Puts settled deliveries back into their queues (if the queue still exists), with
    /// the deadlines they had.
    pub(super) fn requeue(&mut self, settled: Vec<Unacked>) -> Vec<Arc<str>> {
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
    pub(super) fn forget_settled(&self, settled: &[Unacked]) {
        let Some(store) = &self.store else { return };
        for u in settled.iter().filter(|u| u.stored) {
            if let Some(id) = u.msg.stored() {
                store.removed(u.queue_id, id);
            }
        }
    }
}
