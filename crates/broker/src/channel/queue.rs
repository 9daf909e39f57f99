//! `queue.declare`, `bind`, `unbind`, `purge` and `delete`.

use crate::connection::Connection;
use crate::error::AmqpError;
use crate::permission;
use crate::vhost::QueueSpec;
use amq_protocol::protocol::{AMQPClass, queue};

impl Connection {
    pub(super) fn on_queue(&mut self, ch: u16, method: queue::AMQPMethod) -> Result<(), AmqpError> {
        let conn = self.id;
        match method {
            queue::AMQPMethod::Declare(m) => {
                let spec = QueueSpec {
                    name: m.queue.to_string(),
                    passive: m.passive,
                    durable: m.durable,
                    exclusive: m.exclusive,
                    auto_delete: m.auto_delete,
                    arguments: m.arguments,
                };
                let (name, messages, consumers) = if spec.name.is_empty() && !spec.passive {
                    permission::declare_queue(&self.tuning.permissions, "", false)?;
                    self.broker
                        .vhost
                        .lock()
                        .declare_server_named_queue(conn, spec)?
                } else {
                    let name = self.queue_name(ch, &spec.name)?;
                    permission::declare_queue(&self.tuning.permissions, &name, spec.passive)?;
                    self.broker
                        .vhost
                        .lock()
                        .declare_queue(conn, QueueSpec { name, ..spec })?
                };
                self.state(ch).last_queue = Some(name.clone());
                if !m.nowait {
                    self.reply_when_durable(
                        ch,
                        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: name.as_ref().into(),
                            message_count: messages,
                            consumer_count: consumers,
                        })),
                    );
                }
                Ok(())
            }
            queue::AMQPMethod::Bind(m) => {
                let name = self.queue_name(ch, m.queue.as_str())?;
                permission::bind_queue(&self.tuning.permissions, &name)?;
                self.broker.vhost.lock().bind_queue(
                    conn,
                    &name,
                    m.exchange.as_str(),
                    m.routing_key.as_str(),
                    m.arguments,
                )?;
                if !m.nowait {
                    self.reply_when_durable(
                        ch,
                        AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                    );
                }
                Ok(())
            }
            queue::AMQPMethod::Unbind(m) => {
                let name = self.queue_name(ch, m.queue.as_str())?;
                permission::bind_queue(&self.tuning.permissions, &name)?;
                self.broker.vhost.lock().unbind_queue(
                    conn,
                    &name,
                    m.exchange.as_str(),
                    m.routing_key.as_str(),
                    m.arguments,
                )?;
                self.reply_when_durable(
                    ch,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
                Ok(())
            }
            queue::AMQPMethod::Purge(m) => {
                let name = self.queue_name(ch, m.queue.as_str())?;
                permission::purge_queue(&self.tuning.permissions, &name)?;
                let message_count = self.broker.vhost.lock().purge_queue(conn, &name)?;
                if !m.nowait {
                    self.send(
                        ch,
                        &AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count,
                        })),
                    );
                }
                Ok(())
            }
            queue::AMQPMethod::Delete(m) => {
                let name = self.queue_name(ch, m.queue.as_str())?;
                permission::delete_queue(&self.tuning.permissions, &name)?;
                let message_count =
                    self.broker
                        .vhost
                        .lock()
                        .delete_queue(conn, &name, m.if_unused, m.if_empty)?;
                if !m.nowait {
                    self.reply_when_durable(
                        ch,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                            message_count,
                        })),
                    );
                }
                Ok(())
            }
            other => Err(AmqpError::command_invalid(format!(
                "{other:?} is sent by servers, not clients"
            ))),
        }
    }
}
