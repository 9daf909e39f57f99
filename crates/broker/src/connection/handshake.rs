//! The connection handshake: protocol header, `start`/`start-ok` with authentication,
//! `tune`/`tune-ok`, `open`/`open-ok`. It runs on the whole socket before the
//! connection splits into its reader and writer.
//!
//! PLAIN and AMQPLAIN log in with `start-ok` alone. `DISPATCH-ED25519` takes one more
//! round: `start-ok` names the client (for the log), the broker sends `secure` with a
//! fresh [`Challenge`], and the client's `secure-ok` carries the signed proof, which the
//! [`KeyAuthority`] then admits or refuses. Every refusal is
//! `connection.close` 403 ACCESS_REFUSED with the reason, as RabbitMQ does for clients
//! with `authentication_failure_close`.

use super::auth::{Login, admit_key, authenticate, is_offered, offered_mechanisms, unsupported};
use crate::broker::Broker;
use crate::codec::frame::next_frame;
use crate::codec::method::{parse_method, put_method};
use crate::codec::{FRAME_HEARTBEAT, FRAME_METHOD, PROTOCOL_HEADER};
use crate::config::{BrokerConfig, CLOSE_TIMEOUT, FRAME_MIN_SIZE};
use crate::error::AmqpError;
use crate::identity::{KeyAuthority, Permissions};
use crate::queue::ConnId;
use crate::sessions::Session;
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::{Buf, BytesMut};
use dispatch_common::names::MAX_NAME_LEN;
use dispatch_common::sasl::{self, Challenge, Proof};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// What the handshake settled.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub frame_max: u32,
    pub channel_max: u16,
    /// Seconds; 0 disables heartbeats.
    pub heartbeat: u16,
    /// The authenticated user: the PLAIN/AMQPLAIN login, or the id a key proof names.
    /// A published `user_id` property must equal it.
    pub user: String,
    /// What this connection may do (checked by [`crate::permission`]).
    pub permissions: Permissions,
    /// The client understands `basic.cancel` from the broker.
    pub cancel_notify: bool,
    /// The client understands `connection.blocked` / `unblocked`.
    pub blocked_notify: bool,
}

/// Why a handshake ended without an open connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("client sent a protocol header other than AMQP 0-9-1")]
    BadProtocolHeader,
    #[error("refused: {0}")]
    Refused(AmqpError),
    #[error("client broke the tune negotiation: {0}")]
    BadTune(String),
    #[error("connection closed by the client during the handshake")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Runs the handshake on `stream` for connection `id`. Not cancel-safe: callers bound it
/// with a timeout and drop the socket when it fires.
///
/// The login is registered in the broker's sessions (see [`crate::sessions`]) as soon as
/// the user is known, before a key is admitted; the returned [`Session`] must live as
/// long as the connection. Its stop fires with `shutdown` or when the user is revoked,
/// possibly already during the handshake.
pub async fn handshake<'b>(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    peer: SocketAddr,
    broker: &'b Broker,
    id: ConnId,
    shutdown: &CancellationToken,
) -> Result<(Negotiated, Session<'b>), HandshakeError> {
    let config = &broker.config;
    let register = |user: &str| broker.sessions.register(user, id, shutdown);
    while rbuf.len() < PROTOCOL_HEADER.len() {
        if stream.read_buf(rbuf).await? == 0 {
            return Err(HandshakeError::Closed);
        }
    }
    if &rbuf[..PROTOCOL_HEADER.len()] != PROTOCOL_HEADER {
        stream.write_all(PROTOCOL_HEADER).await?;
        return Err(HandshakeError::BadProtocolHeader);
    }
    let _ = rbuf.split_to(PROTOCOL_HEADER.len());

    let mechanisms = offered_mechanisms(config);
    send(stream, start_method(&mechanisms)).await?;
    let start_ok = match next_method(stream, rbuf, config).await? {
        AMQPClass::Connection(connection::AMQPMethod::StartOk(m)) => m,
        _ => {
            return refuse(
                stream,
                rbuf,
                AmqpError::command_invalid("expected 'connection.start-ok'"),
                config,
            )
            .await;
        }
    };
    let mechanism = start_ok.mechanism.as_str();
    let login = if !is_offered(&mechanisms, mechanism) {
        Err(unsupported(mechanism, &mechanisms))
    } else if let (sasl::MECHANISM, Some(authority)) = (mechanism, &config.key_authority) {
        let client = start_ok.response.as_bytes();
        let client = String::from_utf8_lossy(&client[..client.len().min(MAX_NAME_LEN)]);
        tracing::debug!(%peer, %client, "{mechanism} login");
        key_login(stream, rbuf, peer, config, authority, register).await?
    } else {
        // Password users are fixed in the configuration: nothing to register first.
        authenticate(
            mechanism,
            start_ok.response.as_bytes(),
            peer.ip(),
            &config.users,
        )
        .map(|login| {
            let session = register(&login.user);
            (login, session)
        })
    };
    let (Login { user, permissions }, session) = match login {
        Ok(login) => login,
        Err(reason) => {
            return refuse(stream, rbuf, AmqpError::access_refused(reason), config).await;
        }
    };
    let cancel_notify = client_capability(&start_ok.client_properties, "consumer_cancel_notify");
    let blocked_notify = client_capability(&start_ok.client_properties, "connection.blocked");

    send(
        stream,
        AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: config.channel_max,
            frame_max: config.frame_max,
            heartbeat: config.heartbeat_secs,
        })),
    )
    .await?;
    let tune_ok = match next_method(stream, rbuf, config).await? {
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(m)) => m,
        _ => {
            return refuse(
                stream,
                rbuf,
                AmqpError::command_invalid("expected 'connection.tune-ok'"),
                config,
            )
            .await;
        }
    };
    let frame_max = match tune_ok.frame_max {
        0 => config.frame_max,
        n if n < FRAME_MIN_SIZE || n > config.frame_max => {
            return Err(HandshakeError::BadTune(format!(
                "frame_max {n} outside {FRAME_MIN_SIZE}..={}",
                config.frame_max
            )));
        }
        n => n,
    };
    let channel_max = match tune_ok.channel_max {
        0 => config.channel_max,
        n if n > config.channel_max => {
            return Err(HandshakeError::BadTune(format!(
                "channel_max {n} above {}",
                config.channel_max
            )));
        }
        n => n,
    };

    match read_method(stream, rbuf, frame_max).await? {
        AMQPClass::Connection(connection::AMQPMethod::Open(open))
            if open.virtual_host.as_str() == "/" => {}
        AMQPClass::Connection(connection::AMQPMethod::Open(open)) => {
            let err = AmqpError::not_allowed(format!(
                "vhost '{}' not found; this broker serves only '/'",
                open.virtual_host
            ));
            return refuse(stream, rbuf, err, config).await;
        }
        _ => {
            return refuse(
                stream,
                rbuf,
                AmqpError::command_invalid("expected 'connection.open'"),
                config,
            )
            .await;
        }
    }
    send(
        stream,
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    )
    .await?;
    let negotiated = Negotiated {
        frame_max,
        channel_max,
        heartbeat: tune_ok.heartbeat,
        user,
        permissions,
        cancel_notify,
        blocked_notify,
    };
    Ok((negotiated, session))
}

/// The `secure`/`secure-ok` round of a `DISPATCH-ED25519` login: a fresh challenge, the
/// proof read under the usual frame bound, then the authority's decision (`Err` is the
/// reason to refuse). The verified proof's id is registered with `register` before the
/// authority is asked, so a revocation recorded after `admit` still finds this login.
async fn key_login<'b>(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    peer: SocketAddr,
    config: &BrokerConfig,
    authority: &Arc<dyn KeyAuthority>,
    register: impl FnOnce(&str) -> Session<'b>,
) -> Result<Result<(Login, Session<'b>), String>, HandshakeError> {
    let challenge = Challenge::new(authority.broker_key());
    let secure = connection::Secure {
        challenge: challenge.encode().into(),
    };
    send(
        stream,
        AMQPClass::Connection(connection::AMQPMethod::Secure(secure)),
    )
    .await?;
    let proof = match next_method(stream, rbuf, config).await? {
        AMQPClass::Connection(connection::AMQPMethod::SecureOk(m)) => m.response,
        _ => {
            let err = AmqpError::command_invalid("expected 'connection.secure-ok'");
            return refuse(stream, rbuf, err, config).await;
        }
    };
    let (proof, key) = match Proof::verify(proof.as_bytes(), &challenge) {
        Ok(verified) => verified,
        Err(reason) => return Ok(Err(reason)),
    };
    let session = register(&proof.id);
    Ok(admit_key(authority, proof, key, peer)
        .await
        .map(|login| (login, session)))
}

fn start_method(mechanisms: &str) -> AMQPClass {
    let mut capabilities = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "per_consumer_qos",
        "authentication_failure_close",
        "connection.blocked",
    ] {
        capabilities.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    props.insert("product".into(), text(dispatch_common::PRODUCT));
    props.insert("version".into(), text(dispatch_common::VERSION));
    props.insert("platform".into(), text("Rust"));
    props.insert(
        "information".into(),
        text("dispatch embedded AMQP 0-9-1 broker"),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: props,
        mechanisms: LongString::from(mechanisms),
        locales: LongString::from("en_US"),
    }))
}

fn client_capability(props: &FieldTable, name: &str) -> bool {
    let Some(AMQPValue::FieldTable(caps)) = props.inner().get("capabilities") else {
        return false;
    };
    matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
}

async fn send(stream: &mut TcpStream, method: AMQPClass) -> std::io::Result<()> {
    let mut out = Vec::new();
    put_method(&mut out, 0, &method);
    stream.write_all(&out).await
}

/// The next handshake method; a protocol error is reported to the client with
/// `connection.close` before the handshake fails.
async fn next_method(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    config: &BrokerConfig,
) -> Result<AMQPClass, HandshakeError> {
    match read_method(stream, rbuf, config.frame_max).await {
        Err(HandshakeError::Refused(err)) => refuse(stream, rbuf, err, config).await,
        other => other,
    }
}

/// Reads the next method on channel 0, skipping heartbeats.
async fn read_method(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    frame_max: u32,
) -> Result<AMQPClass, HandshakeError> {
    loop {
        let frame = match next_frame(rbuf, frame_max) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                if stream.read_buf(rbuf).await? == 0 {
                    return Err(HandshakeError::Closed);
                }
                continue;
            }
            Err(e) => return Err(HandshakeError::Refused(AmqpError::frame_error(e))),
        };
        let len = frame.wire_len();
        let method = match (frame.kind, frame.channel) {
            (FRAME_HEARTBEAT, _) => None,
            (FRAME_METHOD, 0) => Some(
                parse_method(frame.payload)
                    .map_err(|e| HandshakeError::Refused(AmqpError::frame_error(e))),
            ),
            _ => Some(Err(HandshakeError::Refused(AmqpError::unexpected_frame(
                "only connection methods are allowed before connection.open-ok",
            )))),
        };
        rbuf.advance(len);
        if let Some(method) = method {
            return method;
        }
    }
}

/// Sends `connection.close` with `err`, waits briefly for `close-ok`, and fails the
/// handshake.
async fn refuse<T>(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    err: AmqpError,
    config: &BrokerConfig,
) -> Result<T, HandshakeError> {
    let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: err.code,
        reply_text: err.text.as_str().into(),
        class_id: err.class_id,
        method_id: err.method_id,
    }));
    send(stream, close).await?;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Ok(method) = read_method(stream, rbuf, config.frame_max).await {
            if matches!(
                method,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
            ) {
                break;
            }
        }
    })
    .await;
    Err(HandshakeError::Refused(err))
}
