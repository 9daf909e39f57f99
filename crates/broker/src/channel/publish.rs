//! `basic.publish` with its content, and `confirm.select`.
//!
//! A publish is a method frame, a content header and zero or more body frames. The
//! connection's permission to publish to that exchange with that routing key is checked
//! on the method frame ([`crate::permission::publish`]). The header's body size and its
//! `user_id` property (which must name the authenticated user, as in RabbitMQ) are
//! checked when the header arrives, before any body byte is buffered. Once the body is
//! complete, `CC`/`BCC` keys are checked like the routing key and the message is routed;
//! a mandatory message that reached no queue comes back with `basic.return` (312
//! NO_ROUTE) *before* its publisher confirm, which is written right after routing
//! (transient messages; durable ones will be confirmed once on disk). A message refused
//! by a full queue (`x-overflow = reject-publish[-dlx]`) is nacked in confirm mode, and
//! not returned even if mandatory, as RabbitMQ does.

use crate::codec::content::{
    ContentHeader, headers_table, parse_content_header, routing_keys, without_bcc,
};
use crate::codec::delivery::{ChannelOut, Content, Origin, put_return};
use crate::codec::frame::RawFrame;
use crate::codec::publish::parse_publish;
use crate::codec::{CLASS_BASIC, FRAME_BODY, FRAME_HEADER};
use crate::confirm::{Confirm, ConfirmSink};
use crate::connection::Connection;
use crate::error::{AmqpError, code};
use crate::message::{MemoryCharge, Message};
use crate::permission;
use crate::vhost::Routed;
use amq_protocol::protocol::{AMQPClass, confirm};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// The most a partly received body reserves up front; it grows as frames arrive.
const PENDING_BODY_RESERVE: usize = 1 << 20;

/// A channel in confirm mode: where confirms go and the next sequence number.
#[derive(Debug)]
pub(super) struct Confirms {
    sink: Arc<ConfirmSink>,
    next: u64,
}

impl Confirms {
    fn next(&mut self) -> Confirm {
        let tag = self.next;
        self.next += 1;
        Confirm {
            sink: self.sink.clone(),
            tag,
        }
    }
}

impl Drop for Confirms {
    /// A closed channel gets no more confirms (its number may be reused).
    fn drop(&mut self) {
        self.sink.close();
    }
}

/// The exchange and routing key a channel published to last. A publisher usually sends
/// to one place again and again; its messages share these names instead of allocating
/// their own.
#[derive(Debug, Default)]
pub(super) struct PublishedNames {
    exchange: Option<Arc<str>>,
    routing_key: Option<Arc<str>>,
}

impl PublishedNames {
    /// `name`, shared with the previous publish when it named the same.
    fn share(slot: &mut Option<Arc<str>>, name: &str) -> Arc<str> {
        match slot {
            Some(last) if **last == *name => last.clone(),
            _ => slot.insert(name.into()).clone(),
        }
    }
}

/// A publish waiting for its content.
#[derive(Debug)]
pub(super) struct PendingPublish {
    exchange: Arc<str>,
    routing_key: Arc<str>,
    mandatory: bool,
    header: Option<(Bytes, ContentHeader)>,
    body: BytesMut,
    /// The announced body size, counted against the memory limit until the message
    /// is complete (a client cannot park unbounded half-sent bodies).
    _charge: Option<MemoryCharge>,
}

impl Connection {
    pub(super) fn on_publish(&mut self, ch: u16, payload: &[u8]) -> Result<(), AmqpError> {
        let (class_id, method_id) = crate::codec::publish::BASIC_PUBLISH;
        let args = parse_publish(payload).map_err(|_| {
            AmqpError::frame_error("malformed basic.publish").during(class_id, method_id)
        })?;
        if self.state(ch).pending.is_some() {
            return Err(AmqpError::unexpected_frame(
                "basic.publish before the previous message's content was complete",
            )
            .during(class_id, method_id));
        }
        if args.immediate {
            return Err(AmqpError::not_implemented(
                "immediate=true is not supported (as in RabbitMQ)",
            )
            .during(class_id, method_id));
        }
        permission::publish(&self.tuning.permissions, args.exchange, args.routing_key)
            .map_err(|e| e.during(class_id, method_id))?;
        let state = self.state(ch);
        let names = &mut state.last_published;
        state.pending = Some(PendingPublish {
            exchange: PublishedNames::share(&mut names.exchange, args.exchange),
            routing_key: PublishedNames::share(&mut names.routing_key, args.routing_key),
            mandatory: args.mandatory,
            header: None,
            body: BytesMut::new(),
            _charge: None,
        });
        Ok(())
    }

    /// A content header or body frame.
    pub(super) fn on_content(&mut self, ch: u16, frame: RawFrame) -> Result<(), AmqpError> {
        let max = self.broker.config.max_message_size;
        let user = &self.tuning.user;
        let state = self.channels.entry(ch).or_default();
        let Some(pending) = state.pending.as_mut() else {
            return Err(AmqpError::unexpected_frame(
                "content frame without a preceding basic.publish",
            ));
        };
        match (frame.kind, &pending.header) {
            (FRAME_HEADER, None) => {
                let header = parse_content_header(frame.payload).map_err(AmqpError::frame_error)?;
                if header.class_id != CLASS_BASIC {
                    return Err(AmqpError::frame_error(format!(
                        "content header of class {}; only basic (60) has content",
                        header.class_id
                    )));
                }
                if header.body_size > max {
                    state.pending = None;
                    return Err(AmqpError::precondition_failed(format!(
                        "message size {} is larger than the configured max size {max}",
                        header.body_size
                    ))
                    .during(60, 40));
                }
                if let Some(range) = &header.user_id {
                    check_user_id(&frame.payload[range.clone()], user)?;
                }
                let complete = header.body_size == 0;
                pending._charge = Some(MemoryCharge::new(header.body_size as usize));
                pending.header = Some((Bytes::copy_from_slice(frame.payload), header));
                if complete {
                    return self.complete_publish(ch, Bytes::new());
                }
            }
            (FRAME_BODY, Some((_, header))) => {
                let expected = header.body_size as usize;
                if pending.body.len() + frame.payload.len() > expected {
                    return Err(AmqpError::frame_error(format!(
                        "message body larger than the {expected} bytes its header announced"
                    )));
                }
                if pending.body.is_empty() && frame.payload.len() == expected {
                    return self.complete_publish(ch, Bytes::copy_from_slice(frame.payload));
                }
                if pending.body.is_empty() {
                    pending.body.reserve(expected.min(PENDING_BODY_RESERVE));
                }
                pending.body.extend_from_slice(frame.payload);
                if pending.body.len() == expected {
                    let body = std::mem::take(&mut pending.body).freeze();
                    return self.complete_publish(ch, body);
                }
            }
            (FRAME_HEADER, Some(_)) => {
                return Err(AmqpError::unexpected_frame(
                    "second content header for one message",
                ));
            }
            _ => {
                return Err(AmqpError::unexpected_frame(
                    "content body frame before its content header",
                ));
            }
        }
        Ok(())
    }

    fn complete_publish(&mut self, ch: u16, body: Bytes) -> Result<(), AmqpError> {
        let state = self.state(ch);
        let Some(PendingPublish {
            exchange,
            routing_key,
            mandatory,
            header: Some((mut header_bytes, header)),
            ..
        }) = state.pending.take()
        else {
            return Ok(());
        };
        let confirm = state.confirms.as_mut().map(Confirms::next);
        let during = |e: AmqpError| e.during(60, 40);
        let mut extra_keys = Vec::new();
        let headers = header
            .headers
            .as_ref()
            .and_then(|range| headers_table(&header_bytes, range));
        if let Some(table) = &headers {
            extra_keys.extend(routing_keys(table, "CC"));
            if table.contains_key("BCC") {
                extra_keys.extend(routing_keys(table, "BCC"));
                header_bytes = without_bcc(&header_bytes)
                    .map(Bytes::from)
                    .unwrap_or(header_bytes);
            }
        }
        if !extra_keys.is_empty() {
            permission::publish_cc(&self.tuning.permissions, &exchange, &extra_keys)
                .map_err(during)?;
        }
        let msg = Arc::new(Message::new(
            exchange.clone(),
            routing_key,
            header_bytes,
            body,
            header.persistent,
        ));
        let (routed, confirm) = self
            .broker
            .vhost
            .lock()
            .publish(
                &exchange,
                &extra_keys,
                headers.as_ref(),
                header.expiration_ms,
                msg.clone(),
                confirm,
            )
            .map_err(during)?;
        let out = ChannelOut {
            channel: ch,
            frame_max: self.tuning.frame_max,
        };
        if routed == Routed::Unroutable && mandatory {
            self.outbox.push(|buf| {
                let origin = Origin {
                    exchange: &msg.exchange,
                    routing_key: &msg.routing_key,
                };
                let content = Content {
                    header: &msg.header,
                    body: &msg.body,
                };
                put_return(buf, out, code::NO_ROUTE, "NO_ROUTE", origin, content);
            });
        }
        // Messages the store took are confirmed once on disk; the rest now, after any
        // return. A queue that refused the message (x-overflow) makes it a nack.
        if let Some(confirm) = confirm {
            confirm.complete(routed != Routed::Rejected);
        }
        Ok(())
    }

    pub(super) fn on_confirm(
        &mut self,
        ch: u16,
        method: confirm::AMQPMethod,
    ) -> Result<(), AmqpError> {
        match method {
            confirm::AMQPMethod::Select(m) => {
                let sink = ConfirmSink::new(self.outbox.clone(), ch);
                self.state(ch)
                    .confirms
                    .get_or_insert(Confirms { sink, next: 1 });
                if !m.nowait {
                    self.send(
                        ch,
                        &AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
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

/// A published `user_id` must name the authenticated user (RabbitMQ's rule).
fn check_user_id(user_id: &[u8], user: &str) -> Result<(), AmqpError> {
    if user_id == user.as_bytes() {
        return Ok(());
    }
    Err(AmqpError::precondition_failed(format!(
        "user_id property set to '{}' but authenticated user was '{user}'",
        String::from_utf8_lossy(user_id)
    ))
    .during(60, 40))
}
