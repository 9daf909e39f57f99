//! Channels: what a connection keeps per channel, and where each method is handled.
//!
//! | class | file |
//! | --- | --- |
//! | `channel.open/close/flow` | this module |
//! | `exchange.*` | `exchange.rs` |
//! | `queue.*` | `queue.rs` |
//! | `basic.qos/consume/cancel/get/ack/nack/reject/recover` | `basic.rs` |
//! | `basic.publish` + content, `confirm.select` | `publish.rs` |
//!
//! Soft errors (403–406) close only the channel: the broker sends `channel.close`, forgets
//! the channel's consumers and requeues its unacknowledged messages at once, then
//! discards everything on that channel until `close-ok`.

mod basic;
mod exchange;
mod publish;
mod queue;

use crate::codec::FRAME_METHOD;
use crate::codec::delivery::ChannelOut;
use crate::codec::frame::RawFrame;
use crate::codec::method::{method_ids, parse_method};
use crate::codec::publish::is_publish;
use crate::connection::Connection;
use crate::error::AmqpError;
use crate::vhost::OpenChannel;
use amq_protocol::protocol::{AMQPClass, access, channel};
use publish::{Confirms, PendingPublish, PublishedNames};
use std::sync::Arc;

/// A connection's view of one of its channels.
#[derive(Debug, Default)]
pub struct ChannelState {
    /// `channel.close` was sent; waiting for `close-ok`.
    closing: bool,
    /// In confirm mode: where confirms go and the next sequence number.
    confirms: Option<Confirms>,
    /// A `basic.publish` whose content is still arriving.
    pending: Option<PendingPublish>,
    /// The queue most recently declared, used when a method names the queue `""`.
    last_queue: Option<Arc<str>>,
    /// The exchange and routing key of the latest publish.
    last_published: PublishedNames,
}

impl Connection {
    pub(crate) fn key(&self, channel: u16) -> (u64, u16) {
        (self.id, channel)
    }

    /// Handles a frame on a non-zero channel; connection errors are returned.
    pub(crate) fn on_channel_frame(&mut self, frame: RawFrame) -> Result<(), AmqpError> {
        let ch = frame.channel;
        let Some(state) = self.channels.get(&ch) else {
            return self.on_unopened_channel(&frame);
        };
        if state.closing {
            return self.on_frame_of_closing_channel(&frame);
        }
        let result = if frame.kind == FRAME_METHOD {
            self.on_method(ch, frame.payload)
        } else {
            self.on_content(ch, frame)
        };
        match result {
            Err(err) if !err.is_connection_error() => {
                self.close_channel(ch, err);
                Ok(())
            }
            other => other,
        }
    }

    fn on_unopened_channel(&mut self, frame: &RawFrame) -> Result<(), AmqpError> {
        let opening = frame.kind == FRAME_METHOD
            && matches!(
                parse_method(frame.payload),
                Ok(AMQPClass::Channel(channel::AMQPMethod::Open(_)))
            );
        if !opening {
            return Err(AmqpError::channel_error(format!(
                "expected 'channel.open' on channel {}",
                frame.channel
            )));
        }
        let out = ChannelOut {
            channel: frame.channel,
            frame_max: self.tuning.frame_max,
        };
        let open = OpenChannel::new(self.outbox.clone(), out, self.tuning.cancel_notify);
        self.broker
            .vhost
            .lock()
            .open_channel(self.key(frame.channel), open);
        self.channels.insert(frame.channel, ChannelState::default());
        self.send(
            frame.channel,
            &AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        );
        Ok(())
    }

    fn on_frame_of_closing_channel(&mut self, frame: &RawFrame) -> Result<(), AmqpError> {
        if frame.kind != FRAME_METHOD {
            return Ok(());
        }
        match parse_method(frame.payload) {
            Ok(AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {
                self.channels.remove(&frame.channel);
            }
            Ok(AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {
                self.send(
                    frame.channel,
                    &AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                self.channels.remove(&frame.channel);
            }
            _ => {}
        }
        Ok(())
    }

    /// Closes a channel on a soft error.
    fn close_channel(&mut self, ch: u16, err: AmqpError) {
        tracing::debug!(conn = self.id, channel = ch, "closing channel: {err}");
        let close = AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: err.code,
            reply_text: err.text.as_str().into(),
            class_id: err.class_id,
            method_id: err.method_id,
        }));
        if let Some(state) = self.channels.get_mut(&ch) {
            *state = ChannelState {
                closing: true,
                ..ChannelState::default()
            };
        }
        self.broker.vhost.lock().close_channel(self.key(ch));
        self.send(ch, &close);
    }

    fn state(&mut self, ch: u16) -> &mut ChannelState {
        self.channels.entry(ch).or_default()
    }

    fn on_method(&mut self, ch: u16, payload: &[u8]) -> Result<(), AmqpError> {
        if is_publish(payload) {
            return self.on_publish(ch, payload);
        }
        let (class_id, method_id) = method_ids(payload);
        if self.state(ch).pending.is_some() {
            return Err(AmqpError::unexpected_frame(format!(
                "expected content header for class 60, got method {class_id}.{method_id} instead"
            ))
            .during(class_id, method_id));
        }
        let method = parse_method(payload)
            .map_err(|e| AmqpError::frame_error(e).during(class_id, method_id))?;
        let result = match method {
            AMQPClass::Channel(m) => self.on_channel_method(ch, m),
            AMQPClass::Exchange(m) => self.on_exchange(ch, m),
            AMQPClass::Queue(m) => self.on_queue(ch, m),
            AMQPClass::Basic(m) => self.on_basic(ch, m),
            AMQPClass::Confirm(m) => self.on_confirm(ch, m),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                self.send(
                    ch,
                    &AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            AMQPClass::Tx(_) => Err(AmqpError::not_implemented(
                "transactions (tx.*) are not supported; use publisher confirms (confirm.select)",
            )),
            _ => Err(AmqpError::command_invalid(format!(
                "method {class_id}.{method_id} is not valid on a channel"
            ))),
        };
        result.map_err(|e| e.during(class_id, method_id))
    }

    fn on_channel_method(&mut self, ch: u16, method: channel::AMQPMethod) -> Result<(), AmqpError> {
        match method {
            channel::AMQPMethod::Open(_) => Err(AmqpError::channel_error(format!(
                "second 'channel.open' seen on channel {ch}"
            ))),
            channel::AMQPMethod::Close(close) => {
                tracing::debug!(
                    conn = self.id,
                    channel = ch,
                    code = close.reply_code,
                    "client closed the channel"
                );
                self.broker.vhost.lock().close_channel(self.key(ch));
                self.channels.remove(&ch);
                self.send(
                    ch,
                    &AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                Ok(())
            }
            channel::AMQPMethod::CloseOk(_) => Ok(()),
            channel::AMQPMethod::Flow(flow) => {
                self.broker.vhost.lock().flow(self.key(ch), flow.active);
                self.send(
                    ch,
                    &AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: flow.active,
                    })),
                );
                Ok(())
            }
            channel::AMQPMethod::FlowOk(_) => Ok(()),
            other => Err(AmqpError::command_invalid(format!(
                "{other:?} is sent by servers, not clients"
            ))),
        }
    }

    /// The queue a method means: its own argument, or the channel's last declared queue.
    fn queue_name(&mut self, ch: u16, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.state(ch)
            .last_queue
            .as_deref()
            .map(str::to_owned)
            .ok_or_else(|| {
                AmqpError::not_found("no previously declared queue on this channel; name the queue")
            })
    }
}
