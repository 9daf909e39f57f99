//! `exchange.declare` and `exchange.delete`. Exchange-to-exchange bindings are not
//! supported and say so.

use crate::connection::Connection;
use crate::error::AmqpError;
use crate::permission;
use crate::vhost::ExchangeSpec;
use amq_protocol::protocol::{AMQPClass, exchange};

impl Connection {
    pub(super) fn on_exchange(
        &mut self,
        ch: u16,
        method: exchange::AMQPMethod,
    ) -> Result<(), AmqpError> {
        match method {
            exchange::AMQPMethod::Declare(m) => {
                permission::declare_exchange(
                    &self.tuning.permissions,
                    m.exchange.as_str(),
                    m.passive,
                )?;
                if m.exchange.as_str().is_empty() {
                    return Err(AmqpError::access_refused(
                        "operation not permitted on the default exchange",
                    ));
                }
                let spec = ExchangeSpec {
                    name: m.exchange.to_string(),
                    kind: m.kind.to_string(),
                    passive: m.passive,
                    durable: m.durable,
                    auto_delete: m.auto_delete,
                    internal: m.internal,
                    arguments: m.arguments,
                };
                self.broker.vhost.lock().declare_exchange(spec)?;
                if !m.nowait {
                    self.reply_when_durable(
                        ch,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                    );
                }
                Ok(())
            }
            exchange::AMQPMethod::Delete(m) => {
                permission::delete_exchange(&self.tuning.permissions, m.exchange.as_str())?;
                self.broker
                    .vhost
                    .lock()
                    .delete_exchange(m.exchange.as_str(), m.if_unused)?;
                if !m.nowait {
                    self.reply_when_durable(
                        ch,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                    );
                }
                Ok(())
            }
            exchange::AMQPMethod::Bind(exchange::Bind { destination, .. })
            | exchange::AMQPMethod::Unbind(exchange::Unbind { destination, .. }) => {
                permission::bind_exchange(&self.tuning.permissions, destination.as_str())?;
                Err(AmqpError::not_implemented(
                    "exchange-to-exchange bindings are not supported; bind queues to exchanges",
                ))
            }
            other => Err(AmqpError::command_invalid(format!(
                "{other:?} is sent by servers, not clients"
            ))),
        }
    }
}
