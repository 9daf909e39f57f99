//! `basic.qos`, `consume`, `cancel`, `get`, `ack`, `nack`, `reject` and `recover`.
//! (`basic.publish` is in [`super::publish`].)

use crate::connection::Connection;
use crate::error::AmqpError;
use crate::names::{CONSUMER_TAG_PREFIX, random_token};
use crate::permission;
use crate::vhost::ConsumeSpec;
use amq_protocol::protocol::{AMQPClass, basic};
use std::sync::Arc;

impl Connection {
    pub(super) fn on_basic(&mut self, ch: u16, method: basic::AMQPMethod) -> Result<(), AmqpError> {
        let key = self.key(ch);
        match method {
            basic::AMQPMethod::Qos(m) => {
                self.broker
                    .vhost
                    .lock()
                    .qos(key, m.prefetch_count, m.global);
                self.send(
                    ch,
                    &AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::Consume(m) => {
                let queue = self.queue_name(ch, m.queue.as_str())?;
                permission::consume(&self.tuning.permissions, &queue)?;
                let tag: Arc<str> = if m.consumer_tag.as_str().is_empty() {
                    format!("{CONSUMER_TAG_PREFIX}{}", random_token()).into()
                } else {
                    m.consumer_tag.as_str().into()
                };
                let mut vhost = self.broker.vhost.lock();
                if vhost.has_consumer(key, &tag) {
                    return Err(AmqpError::not_allowed(format!(
                        "attempt to reuse consumer tag '{tag}'"
                    )));
                }
                // consume-ok must precede the first delivery, which `consume` may write.
                vhost.check_consumable(key, &queue, m.exclusive)?;
                if !m.nowait {
                    let ok = AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                        consumer_tag: tag.as_ref().into(),
                    }));
                    self.send(ch, &ok);
                }
                vhost.consume(
                    key,
                    ConsumeSpec {
                        queue,
                        tag,
                        no_ack: m.no_ack,
                        exclusive: m.exclusive,
                    },
                )
            }
            basic::AMQPMethod::Cancel(m) => {
                let deleted_durable = self
                    .broker
                    .vhost
                    .lock()
                    .cancel(key, m.consumer_tag.as_str());
                if !m.nowait {
                    let ok = AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: m.consumer_tag,
                    }));
                    // Its last consumer gone, a durable auto-delete queue was deleted.
                    if deleted_durable {
                        self.reply_when_durable(ch, ok);
                    } else {
                        self.send(ch, &ok);
                    }
                }
                Ok(())
            }
            basic::AMQPMethod::Get(m) => {
                let queue = self.queue_name(ch, m.queue.as_str())?;
                permission::get(&self.tuning.permissions, &queue)?;
                if !self.broker.vhost.lock().get(key, &queue, m.no_ack)? {
                    self.send(
                        ch,
                        &AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                    );
                }
                Ok(())
            }
            basic::AMQPMethod::Ack(m) => {
                self.broker
                    .vhost
                    .lock()
                    .ack(key, m.delivery_tag, m.multiple)
            }
            basic::AMQPMethod::Nack(m) => {
                self.broker
                    .vhost
                    .lock()
                    .nack(key, m.delivery_tag, m.multiple, m.requeue)
            }
            basic::AMQPMethod::Reject(m) => {
                self.broker
                    .vhost
                    .lock()
                    .nack(key, m.delivery_tag, false, m.requeue)
            }
            basic::AMQPMethod::Recover(_) => {
                // recover-ok first, under the lock: clients (lapin) drop deliveries that
                // precede it, and the writer may redeliver as soon as the lock is free.
                let mut vhost = self.broker.vhost.lock();
                self.send(
                    ch,
                    &AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
                vhost.recover(key);
                Ok(())
            }
            basic::AMQPMethod::RecoverAsync(_) => {
                self.broker.vhost.lock().recover(key);
                Ok(())
            }
            other => Err(AmqpError::command_invalid(format!(
                "{other:?} is sent by servers, not clients"
            ))),
        }
    }
}
