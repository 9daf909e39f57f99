//! Exchanges, queues and bindings: declare, delete, bind, unbind, purge.

use super::*;
use crate::persistence::{binding_def, exchange_def, queue_def};
use crate::store::topology::Change;

impl State {
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
            let flags = [
                ("durable", spec.durable, ex.durable),
                ("auto_delete", spec.auto_delete, ex.auto_delete),
                ("internal", spec.internal, ex.internal),
            ];
            for (what, received, current) in flags {
                if received != current {
                    return Err(inequivalent(
                        what, "exchange", &spec.name, received, current,
                    ));
                }
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
        if ex.durable {
            self.record_topology(Change::Exchange(exchange_def(&ex)));
        }
        self.exchanges.insert(ex.name.clone(), ex);
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
        if let Some(ex) = self.exchanges.remove(name) {
            self.record_exchanges_deleted(&[ex]);
        }
        Ok(())
    }

    // ---- queues ----

    /// Whether queue `name` has a consumer now; a queue that does not exist has none. What
    /// a passive `queue.declare` reports as its consumer count, asked in process.
    pub fn has_consumers(&self, name: &str) -> bool {
        self.queues
            .get(name)
            .is_some_and(|q| !q.consumers.is_empty())
    }

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

    pub(super) fn create_queue(
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
        if queue.is_persisted() {
            self.record_topology(Change::Queue(queue_def(&queue)));
        }
        self.queues.insert(name.clone(), queue);
        Ok((name, 0, 0))
    }

    pub(super) fn queue_for(&mut self, conn: ConnId, name: &str) -> Result<&mut Queue, AmqpError> {
        let q = self.queues.get_mut(name).ok_or_else(|| no_queue(name))?;
        if !q.accessible_by(conn) {
            return Err(locked(name));
        }
        Ok(q)
    }

    /// Checks a `queue.bind` or `queue.unbind` and builds the binding; also says
    /// whether the queue is persisted.
    fn binding(
        &mut self,
        conn: ConnId,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(Binding, bool), AmqpError> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let q = self.queue_for(conn, queue)?;
        let (queue, persisted) = (q.name.clone(), q.is_persisted());
        if !self.exchanges.contains_key(exchange) {
            return Err(no_exchange(exchange));
        }
        let binding = Binding {
            queue,
            routing_key: routing_key.into(),
            arguments,
        };
        Ok((binding, persisted))
    }

    pub fn bind_queue(
        &mut self,
        conn: ConnId,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        let (binding, persisted) = self.binding(conn, queue, exchange, routing_key, arguments)?;
        let Some(ex) = self.exchanges.get_mut(exchange) else {
            return Err(no_exchange(exchange));
        };
        let recorded = (persisted && ex.durable).then(|| binding_def(exchange, &binding));
        ex.bind(binding);
        if let Some(def) = recorded {
            self.record_topology(Change::Bound(def));
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
        let (binding, persisted) = self.binding(conn, queue, exchange, routing_key, arguments)?;
        let Some(ex) = self.exchanges.get_mut(exchange) else {
            return Err(no_exchange(exchange));
        };
        let removed = ex.unbind(&binding);
        let emptied = removed && ex.auto_delete && !ex.has_bindings();
        if removed && persisted && ex.durable {
            self.record_topology(Change::Unbound(binding_def(exchange, &binding)));
        }
        if emptied && let Some(ex) = self.exchanges.remove(exchange) {
            self.record_exchanges_deleted(&[ex]);
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
    pub(super) fn remove_queue(&mut self, name: &str) -> u32 {
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
        let (count, stored) = q.clear();
        self.forget_stored_ids(q.id, q.is_persisted(), stored);
        if q.is_persisted() {
            self.record_topology(Change::QueueDeleted(name.to_owned()));
        }
        let emptied: Vec<Exchange> = emptied
            .iter()
            .filter_map(|ex| self.exchanges.remove(ex))
            .collect();
        self.record_exchanges_deleted(&emptied);
        count
    }
}
