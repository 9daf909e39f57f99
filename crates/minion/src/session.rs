//! One connected session with the master's broker: one channel with publisher
//! confirms, `basic.qos(prefetch = concurrency)`, a consumer on the minion's own queue
//! (declared by the master; the minion declares nothing), and the publishes a minion
//! may make: signed replies to `dispatch.results`, signed presence events and, on an
//! external broker, a signed key request to `dispatch.master.keys` before consuming.
//!
//! Every publish waits for the broker's confirm, so a reply counts as sent only once the
//! broker has it. On a key login (`DISPATCH-ED25519`, the embedded broker) publishes
//! carry `user_id` = the minion id, the name it logged in as; on a PLAIN login (an
//! external broker, URL with `user:password`) they carry none, since RabbitMQ refuses
//! (406) a `user_id` other than the user name. Replies are signed under
//! [`domain::REPLY`], presence events under [`domain::PRESENCE`]. What to do with
//! deliveries is [`crate::daemon`]'s business.

use crate::config::Config;
use dispatch_common::client::{PERSISTENT, TRANSIENT};
use dispatch_common::envelope::{Envelope, domain};
use dispatch_common::keys::KeyPair;
use dispatch_common::message::{KeyRequest, Presence, Reply, now_ms};
use dispatch_common::names;
use dispatch_common::rpc::Role;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};

/// Content type of every dispatch message.
const CONTENT_TYPE: &str = "application/msgpack";

/// Why a session ended or could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot open a channel: {0}")]
    Channel(lapin::Error),
    #[error("{}", consume_failure(.queue, .source))]
    Consume { queue: String, source: lapin::Error },
    #[error("cannot publish to {to}: {source}")]
    Publish { to: String, source: lapin::Error },
    #[error("the broker refused (nack) a message to {0}")]
    Nacked(String),
    #[error("the connection was lost: {0}")]
    Lost(lapin::Error),
    #[error("the broker cancelled the consumer of {0}")]
    Cancelled(String),
}

/// Why consuming the minion's queue failed. The master declares the queue when it
/// accepts the key, so right after acceptance a login can come first and find no queue.
fn consume_failure(queue: &str, source: &lapin::Error) -> String {
    match source.kind() {
        lapin::ErrorKind::ProtocolError(e) if e.get_id() == NOT_FOUND => format!(
            "queue {queue} not found: the key is not accepted yet, or was accepted a moment \
             ago (retrying)"
        ),
        _ => format!("cannot consume queue {queue}: {source}"),
    }
}

/// The AMQP reply code of a missing queue.
const NOT_FOUND: u16 = 404;

/// The presence events of a minion: `minion.<id>.<kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceKind {
    Up,
    Heartbeat,
    Down,
}

impl PresenceKind {
    fn as_str(self) -> &'static str {
        match self {
            PresenceKind::Up => "up",
            PresenceKind::Heartbeat => "heartbeat",
            PresenceKind::Down => "down",
        }
    }
}

/// An open session.
pub struct Session {
    connection: Connection,
    /// Logs the broker blocking the minion's publishes; stops with the session.
    _blocking_log: tokio_util::task::AbortOnDropHandle<()>,
    channel: Channel,
    consumer: Consumer,
    queue: String,
    /// The `user_id` of every publish: the minion id on key logins, none on PLAIN.
    user_id: Option<String>,
}

/// On an external broker the master sees no login: ask for the key to be accepted with
/// a signed request (the master records it as pending, or refreshes its last-seen time).
async fn request_key(
    channel: &Channel,
    config: &Config,
    pair: &KeyPair,
) -> Result<(), SessionError> {
    let request = KeyRequest {
        id: config.id.clone(),
        role: Role::Minion,
        groups: config.groups.clone(),
        at_ms: now_ms(),
    };
    let body = Envelope::seal(domain::KEY_REQUEST, pair, &config.id, &request);
    let properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(CONTENT_TYPE.into());
    publish(channel, "", names::KEY_REQUESTS_QUEUE, &body, properties).await
}

/// Publishes `body` and waits for the broker's confirm; a nack is an error.
async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), SessionError> {
    let to = || {
        if exchange.is_empty() {
            routing_key.to_owned()
        } else {
            format!("{exchange}/{routing_key}")
        }
    };
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .map_err(|source| SessionError::Publish { to: to(), source })?;
    let confirmation = confirm
        .await
        .map_err(|source| SessionError::Publish { to: to(), source })?;
    if confirmation.is_nack() {
        return Err(SessionError::Nacked(to()));
    }
    Ok(())
}

impl Session {
    /// Opens the channel and starts consuming the minion's queue. On failure the
    /// connection is closed.
    pub async fn open(
        connection: Connection,
        config: &Config,
        pair: &KeyPair,
    ) -> Result<Self, SessionError> {
        let queue = names::minion_queue(&config.id);
        // Listening first: lapin drops events nobody listens to yet, and set-up publishes
        // (a key request, on an external broker).
        let blocking_log = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            dispatch_common::client::log_blocking(connection.events_listener()),
        ));
        match Self::setup(&connection, config, pair, &queue).await {
            Ok((channel, consumer)) => Ok(Self {
                _blocking_log: blocking_log,
                connection,
                channel,
                consumer,
                queue,
                user_id: (!config.external_broker).then(|| config.id.clone()),
            }),
            Err(e) => {
                dispatch_common::client::close(&connection, "minion session set-up failed").await;
                Err(e)
            }
        }
    }

    async fn setup(
        connection: &Connection,
        config: &Config,
        pair: &KeyPair,
        queue: &str,
    ) -> Result<(Channel, Consumer), SessionError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(SessionError::Channel)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(SessionError::Channel)?;
        channel
            .basic_qos(config.concurrency, BasicQosOptions::default())
            .await
            .map_err(SessionError::Channel)?;
        if config.external_broker {
            request_key(&channel, config, pair).await?;
        }
        let consumer = channel
            .basic_consume(
                queue.into(),
                format!("dispatch-minion.{}", config.id).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| SessionError::Consume {
                queue: queue.to_owned(),
                source,
            })?;
        Ok((channel, consumer))
    }

    /// The stream of deliveries (cancel-safe to poll with `next`).
    pub fn consumer(&mut self) -> &mut Consumer {
        &mut self.consumer
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Signs and publishes `reply` to the results queue, waiting for the confirm.
    pub async fn publish_reply(&self, pair: &KeyPair, reply: &Reply) -> Result<(), SessionError> {
        let body = Envelope::seal(domain::REPLY, pair, &reply.minion, reply);
        let properties = self
            .properties()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(CONTENT_TYPE.into())
            .with_correlation_id(reply.job_id.to_string().into());
        publish(&self.channel, "", names::RESULTS_QUEUE, &body, properties).await
    }

    /// Signs and publishes a presence event.
    pub async fn publish_presence(
        &self,
        pair: &KeyPair,
        config: &Config,
        kind: PresenceKind,
    ) -> Result<(), SessionError> {
        let presence = Presence {
            minion: config.id.clone(),
            groups: config.groups.clone(),
            version: dispatch_common::VERSION.to_owned(),
            at_ms: now_ms(),
            up: kind != PresenceKind::Down,
        };
        let body = Envelope::seal(domain::PRESENCE, pair, &config.id, &presence);
        let key = format!(
            "{}{}",
            names::minion_event_prefix(&config.id),
            kind.as_str()
        );
        let properties = self
            .properties()
            .with_delivery_mode(TRANSIENT)
            .with_content_type(CONTENT_TYPE.into());
        publish(
            &self.channel,
            names::EVENTS_EXCHANGE,
            &key,
            &body,
            properties,
        )
        .await
    }

    /// The properties every publish starts from.
    fn properties(&self) -> BasicProperties {
        let properties = BasicProperties::default();
        match &self.user_id {
            Some(id) => properties.with_user_id(id.as_str().into()),
            None => properties,
        }
    }

    /// Stops the deliveries (shutdown); deliveries not yet taken go back to the queue
    /// when the channel closes.
    pub async fn stop_consuming(&self) {
        if let Err(e) = self
            .channel
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
            .await
        {
            tracing::debug!("cancelling the consumer failed: {e}");
        }
    }

    /// Whether the broker holds back this session's publishes now (its disk or memory
    /// alarm): lapin then writes nothing on the connection until it lets them go.
    pub fn is_blocked(&self) -> bool {
        self.connection.status().blocked()
    }

    /// Closes the connection ([`dispatch_common::client::close`]).
    pub async fn close(self) {
        dispatch_common::client::close(&self.connection, "minion stopping").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError, AMQPSoftError};

    fn protocol_error(kind: AMQPErrorKind) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(kind, "NOT_FOUND - no queue".into())).into()
    }

    #[test]
    fn a_missing_queue_says_the_key_may_have_just_been_accepted() {
        let queue = names::minion_queue("web.01");
        let missing = SessionError::Consume {
            queue: queue.clone(),
            source: protocol_error(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)),
        }
        .to_string();
        assert_eq!(
            missing,
            format!(
                "queue {queue} not found: the key is not accepted yet, or was accepted a \
                 moment ago (retrying)"
            )
        );
        assert!(!missing.contains("dispatch key accept"), "{missing}");
        let other = SessionError::Consume {
            queue: queue.clone(),
            source: protocol_error(AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR)),
        }
        .to_string();
        assert!(
            other.starts_with(&format!("cannot consume queue {queue}: ")),
            "{other}"
        );
    }
}
