//! One client connection, from accept to close.
//!
//! After the [`handshake()`], the socket splits: this task reads frames and handles each
//! one in order (channel methods in [`crate::channel`]), writing replies into the
//! connection's [`Outbox`]; the `writer` task drains that outbox into the socket.
//! Reading pauses while the outbox is over its bound, so a client that does not read
//! cannot make the broker buffer without limit. A peer silent for two heartbeat
//! intervals is dead. Connection errors send `connection.close` and wait (bounded) for
//! `close-ok`; broker shutdown does the same with 320 CONNECTION_FORCED, and so does
//! revoking the connection's user ([`Broker::close_connections_of`]).

pub mod auth;
pub mod handshake;
mod read_size;
mod writer;

use crate::broker::Broker;
use crate::channel::ChannelState;
use crate::codec::frame::{RawFrame, next_frame, starts_with_publish};
use crate::codec::method::{method_ids, parse_method, put_method};
use crate::codec::{FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};
use crate::config::{
    ALARM_POLL, CLOSE_TIMEOUT, HANDSHAKE_TIMEOUT, OUTBOX_HIGH_WATER, READ_SIZE_MIN,
};
use crate::error::{AmqpError, code};
use crate::fast_map::FastMap;
use crate::outbox::{Outbox, batch};
use crate::queue::ConnId;
use crate::sessions::Stop;
use amq_protocol::protocol::{AMQPClass, connection};
use bytes::{Buf, BytesMut};
use handshake::{Negotiated, handshake};
use read_size::ReadSize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::sync::CancellationToken;

/// Whether the client has closed its side of the socket (`EPOLLRDHUP`), asked without
/// reading what it sent before.
async fn peer_has_left(reader: &OwnedReadHalf) -> bool {
    let ready = tokio::time::timeout(Duration::ZERO, reader.ready(Interest::READABLE)).await;
    matches!(ready, Ok(Ok(ready)) if ready.is_read_closed())
}

/// What the reader does after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// A publish is next while an alarm (memory, disk) is on: read nothing more until it
    /// clears.
    Blocked,
    /// A reply waits for a durable topology change to reach the disk: handle nothing more
    /// until it is sent.
    Held,
    /// The connection is finished (close handshake done, or the peer must be dropped).
    Done,
}

/// The reader side of an open connection.
pub struct Connection {
    pub(crate) id: ConnId,
    pub(crate) broker: Arc<Broker>,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) tuning: Negotiated,
    pub(crate) channels: FastMap<u16, ChannelState>,
    /// `connection.close` was sent; only `close-ok` (or a crossing `close`) matters now.
    closing: bool,
    /// A reply held until topology change number `.0` is on disk (channel, method).
    held: Option<(u64, u16, AMQPClass)>,
}

/// Serves one accepted socket until it closes or `shutdown` fires. Never panics on
/// client input; every exit path releases the connection's queues and consumers.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let mut rbuf = BytesMut::with_capacity(READ_SIZE_MIN);
    let id = broker.next_connection_id();
    let (tuning, session) = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(&mut stream, &mut rbuf, peer, &broker, id, &shutdown),
    )
    .await
    {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => {
            tracing::info!(%peer, "handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "handshake timed out after {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    tracing::debug!(%peer, conn = id, user = %tuning.user, "connection open");
    crate::spin::watch(&stream);
    let (reader, writer) = stream.into_split();
    let outbox = Arc::new(Outbox::new(writer, OUTBOX_HIGH_WATER));
    let heartbeat =
        (tuning.heartbeat > 0).then(|| Duration::from_secs(u64::from(tuning.heartbeat)));
    let writer = tokio::spawn(writer::run(
        outbox.clone(),
        heartbeat.map(|h| h / 2),
        broker.clone(),
        id,
    ));
    let mut conn = Connection {
        id,
        broker: broker.clone(),
        outbox: outbox.clone(),
        tuning,
        channels: FastMap::default(),
        closing: false,
        held: None,
    };
    let released = Released {
        broker: broker.clone(),
        outbox: outbox.clone(),
        id,
    };
    conn.read_loop(reader, rbuf, heartbeat, session.stop())
        .await;
    drop(released);
    drop(session); // it holds no more rights; only the close is left to flush
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        writer.abort(); // the peer stopped reading; drop what it did not take
    }
    tracing::debug!(%peer, conn = id, "connection closed");
}

/// Releases a connection's share of the vhost when dropped: at the end of
/// [`serve`], and also if handling a frame panicked, so nothing it held leaks.
struct Released {
    broker: Arc<Broker>,
    outbox: Arc<Outbox>,
    id: ConnId,
}

impl Drop for Released {
    fn drop(&mut self) {
        batch(|| self.broker.vhost.lock().close_connection(self.id));
        self.outbox.close();
    }
}

impl Connection {
    async fn read_loop(
        &mut self,
        mut reader: OwnedReadHalf,
        mut rbuf: BytesMut,
        heartbeat: Option<Duration>,
        stop: &Stop,
    ) {
        // A peer is dead after two silent heartbeat intervals.
        let idle_limit = heartbeat.map_or(Duration::MAX, |h| h * 2);
        let mut close_deadline: Option<tokio::time::Instant> = None;
        let mut read_size = ReadSize::default();
        loop {
            // Revoked (or shut down) while frames were in flight: handle none of them
            // with the old permissions. Also catches a revocation during the handshake.
            if stop.is_cancelled() && !self.closing {
                self.forced_close(stop);
            }
            match batch(|| self.handle_buffered_frames(&mut rbuf)) {
                Flow::Done => return,
                Flow::Blocked => {
                    if !self.wait_out_alarm(&reader, stop).await {
                        return;
                    }
                    continue;
                }
                Flow::Held => {
                    self.send_held_reply(stop).await;
                    continue;
                }
                Flow::Continue => {}
            }
            if self.closing && close_deadline.is_none() {
                close_deadline = Some(tokio::time::Instant::now() + CLOSE_TIMEOUT);
            }
            let wait = close_deadline.map_or(idle_limit, |d| {
                d.saturating_duration_since(tokio::time::Instant::now())
            });
            // Backpressure: read nothing more while the client is not reading its output.
            if self.outbox.is_full() {
                tokio::select! {
                    () = stop.cancelled(), if !self.closing => self.forced_close(stop),
                    () = self.outbox.wait_for_room() => {}
                }
                continue;
            }
            if self.outbox.is_closed() {
                return;
            }
            let room = read_size.make_room(&mut rbuf);
            tokio::select! {
                biased;
                () = stop.cancelled(), if !self.closing => self.forced_close(stop),
                read = tokio::time::timeout(wait, reader.read_buf(&mut rbuf)) => match read {
                    Ok(Ok(0) | Err(_)) => return,
                    Ok(Ok(read)) => read_size.after_read(read, room),
                    Err(_) if self.closing => return,
                    Err(_) => {
                        tracing::info!(conn = self.id, "missed heartbeats from client; closing the connection");
                        return;
                    }
                },
            }
        }
    }

    /// Stops reading from a publisher (a connection about to publish) until the broker's
    /// alarm (memory above its limit, disk below its free limit) clears, as RabbitMQ
    /// does; others keep flowing. Tells clients that understand it with
    /// `connection.blocked` / `unblocked`. False when the client closed its side
    /// meanwhile: it gave up, and a publish it sent must not take effect later, so the
    /// connection ends with its input unread.
    async fn wait_out_alarm(&mut self, reader: &OwnedReadHalf, stop: &Stop) -> bool {
        let Some(reason) = self.broker.alarm() else {
            return true;
        };
        tracing::info!(conn = self.id, "{reason}: blocking a publishing connection");
        let notify = self.tuning.blocked_notify;
        if notify {
            self.send(
                0,
                &AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: reason.into(),
                })),
            );
        }
        while self.broker.alarm().is_some() {
            tokio::select! {
                () = stop.cancelled() => {
                    self.forced_close(stop);
                    return true;
                }
                () = tokio::time::sleep(ALARM_POLL) => {}
            }
            if peer_has_left(reader).await {
                tracing::info!(
                    conn = self.id,
                    "the client left while held back; what it sent since is dropped unread"
                );
                return false;
            }
        }
        if notify {
            self.send(
                0,
                &AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
            );
        }
        true
    }

    /// Sends the held reply once its topology change is on disk (a shutdown or
    /// revocation closes the connection instead).
    async fn send_held_reply(&mut self, stop: &Stop) {
        let Some((seq, channel, reply)) = self.held.take() else {
            return;
        };
        let Some(store) = self.broker.store.clone() else {
            return self.send(channel, &reply);
        };
        tokio::select! {
            () = stop.cancelled() => self.forced_close(stop),
            () = store.topology_synced(seq) => self.send(channel, &reply),
        }
    }

    /// Sends the reply to a queue or exchange method, or holds it (and everything the
    /// client sent after it) while a durable topology change is on its way to disk: a
    /// client told that its durable queue exists can rely on it after a crash.
    pub(crate) fn reply_when_durable(&mut self, channel: u16, reply: AMQPClass) {
        match self
            .broker
            .store
            .as_ref()
            .and_then(|s| s.topology_unsynced())
        {
            Some(seq) => self.held = Some((seq, channel, reply)),
            None => self.send(channel, &reply),
        }
    }

    /// Handles every complete frame in the read buffer, as one outbox batch.
    fn handle_buffered_frames(&mut self, rbuf: &mut BytesMut) -> Flow {
        loop {
            if !self.closing && starts_with_publish(rbuf) && self.broker.alarm().is_some() {
                return Flow::Blocked;
            }
            match next_frame(rbuf, self.tuning.frame_max) {
                Ok(Some(frame)) => {
                    crate::coalesce::note_frames(1);
                    let len = frame.wire_len();
                    let flow = self.on_frame(frame);
                    rbuf.advance(len);
                    if flow == Flow::Done {
                        return Flow::Done;
                    }
                    if self.held.is_some() {
                        return Flow::Held;
                    }
                }
                Ok(None) => return Flow::Continue,
                Err(e) => {
                    self.close_connection(AmqpError::frame_error(e));
                    // Nothing more can be parsed from this stream; the close is sent.
                    return Flow::Done;
                }
            }
        }
    }

    /// Handles one frame. Connection errors are reported here and end the connection.
    fn on_frame(&mut self, frame: RawFrame) -> Flow {
        if self.closing {
            return self.on_frame_while_closing(&frame);
        }
        let result = match (frame.kind, frame.channel) {
            (FRAME_HEARTBEAT, 0) => Ok(Flow::Continue),
            (FRAME_HEARTBEAT, _) => Err(AmqpError::frame_error(
                "heartbeat frame on a non-zero channel",
            )),
            (FRAME_METHOD, 0) => self.on_connection_method(frame.payload),
            (FRAME_HEADER | FRAME_BODY, 0) => {
                Err(AmqpError::command_invalid("content frame on channel 0"))
            }
            (_, channel) if channel > self.tuning.channel_max => {
                Err(AmqpError::channel_error(format!(
                    "channel id {channel} exceeds the negotiated channel_max {}",
                    self.tuning.channel_max
                )))
            }
            _ => self.on_channel_frame(frame).map(|()| Flow::Continue),
        };
        match result {
            Ok(flow) => flow,
            Err(err) => {
                self.close_connection(err);
                Flow::Continue
            }
        }
    }

    fn on_frame_while_closing(&mut self, frame: &RawFrame) -> Flow {
        if frame.kind != FRAME_METHOD || frame.channel != 0 {
            return Flow::Continue;
        }
        match parse_method(frame.payload) {
            Ok(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => Flow::Done,
            Ok(AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                self.send(
                    0,
                    &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                Flow::Done
            }
            _ => Flow::Continue,
        }
    }

    fn on_connection_method(&mut self, payload: &[u8]) -> Result<Flow, AmqpError> {
        let (class_id, method_id) = method_ids(payload);
        let method = parse_method(payload)
            .map_err(|e| AmqpError::frame_error(e).during(class_id, method_id))?;
        match method {
            AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                tracing::debug!(conn = self.id, code = close.reply_code, text = %close.reply_text, "client closed the connection");
                self.send(
                    0,
                    &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                // Release everything now, then let the client close the socket first
                // (bounded): clients treat a broker-side EOF racing close-ok as an error.
                self.release();
                Ok(Flow::Continue)
            }
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => Err(
                AmqpError::not_implemented("connection.update-secret is not supported")
                    .during(class_id, method_id),
            ),
            _ => Err(AmqpError::command_invalid(format!(
                "method {class_id}.{method_id} is not allowed on channel 0"
            ))
            .during(class_id, method_id)),
        }
    }

    /// Closes with 320 CONNECTION_FORCED: the broker shuts down or the user was revoked.
    fn forced_close(&mut self, stop: &Stop) {
        self.close_connection(AmqpError::new(code::CONNECTION_FORCED, stop.reason()));
    }

    /// Sends `connection.close` and waits (in the read loop) for `close-ok`.
    pub(crate) fn close_connection(&mut self, err: AmqpError) {
        if err.code == code::CONNECTION_FORCED {
            tracing::debug!(conn = self.id, "closing connection: {err}");
        } else {
            tracing::info!(conn = self.id, "closing connection on error: {err}");
        }
        let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: err.code,
            reply_text: err.text.as_str().into(),
            class_id: err.class_id,
            method_id: err.method_id,
        }));
        self.send(0, &close);
        self.release();
    }

    /// Forgets the connection's channels, consumers and exclusive queues; from now on
    /// the read loop only waits for `close-ok` or the end of the stream.
    fn release(&mut self) {
        self.closing = true;
        self.broker.vhost.lock().close_connection(self.id);
        self.channels.clear();
    }

    /// Queues a method frame for the client.
    pub(crate) fn send(&self, channel: u16, method: &AMQPClass) {
        self.outbox.push(|out| put_method(out, channel, method));
    }
}
