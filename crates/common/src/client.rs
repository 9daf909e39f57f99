//! How every dispatch process connects to a broker.
//!
//! A URL with credentials (`amqp://user:password@host:5672/%2f`, e.g. RabbitMQ) logs in
//! with PLAIN; one without (`amqp://host:5672`, the embedded broker) logs in with the
//! process's key through [`SaslClient`].
//!
//! lapin 4 logs a refusal of the client's own auth provider (e.g. a broker key other than
//! the pinned one) but never ends the connect; [`connect`] watches for it and ends the
//! attempt at once with that refusal as an `AuthProviderError`.

use crate::sasl::SaslClient;
use futures_lite::{Stream, StreamExt};
use lapin::auth::AuthProvider;
use lapin::types::{LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};
use std::time::Duration;
use tokio::sync::watch;

/// Longest wait for the broker to answer a process's `connection.close`.
pub const POLITE_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Closes `connection`, waiting at most [`POLITE_CLOSE_WAIT`] for the broker. A
/// connection the broker holds back (its disk or memory alarm) is just dropped: lapin
/// writes nothing on it, and the broker does not read it until the alarm clears.
pub async fn close(connection: &Connection, reason: &str) {
    if connection.status().blocked() {
        return;
    }
    match tokio::time::timeout(POLITE_CLOSE_WAIT, connection.close(200, reason.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("closing the connection failed: {e}"),
        Err(_) => tracing::debug!("the broker did not answer the close; dropping the connection"),
    }
}

/// Logs the broker blocking and unblocking a connection's publishes (`connection.blocked`:
/// its disk or memory alarm), which would otherwise look like a hang. `events` comes from
/// `Connection::events_listener`; runs until they end, so spawn it beside the connection
/// and stop it with the connection. lapin hands each event to one listener only: a
/// connection must have no other.
pub async fn log_blocking(events: impl Stream<Item = lapin::Event>) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            lapin::Event::ConnectionBlocked(reason) => tracing::warn!(
                "the broker holds back this process's publishes ({reason}); they wait until it has room again"
            ),
            lapin::Event::ConnectionUnblocked => {
                tracing::info!("the broker accepts this process's publishes again");
            }
            _ => {}
        }
    }
}

/// Whether `url` names a user and password.
pub fn has_credentials(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority.contains('@')
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// The `frame_max` dispatch's own processes ask for, unless the URL says otherwise.
/// lapin keeps 32 frames of read and of write buffer per connection, so the broker's
/// default (128 KiB) would cost a small daemon 8 MiB; dispatch's messages are small, and
/// larger ones (a reply with 1 MiB of output) are simply cut into more frames.
pub const CLIENT_FRAME_MAX: u32 = 16 * 1024;

/// AMQP delivery mode of a message the broker keeps on disk (commands, replies, key
/// requests).
pub const PERSISTENT: u8 = 2;
/// AMQP delivery mode of a message kept in memory only (presence events).
pub const TRANSIENT: u8 = 1;

/// Connects to `url`, with `sasl` unless the URL carries credentials. `name` is the
/// connection name the broker shows. Not bounded in time: callers add their timeout.
pub async fn connect(url: &str, sasl: SaslClient, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_client_property("product".into(), crate::PRODUCT.into())
        .with_client_property("version".into(), crate::VERSION.into());
    let mut uri: AMQPUri = match url.parse() {
        Ok(uri) => uri,
        // lapin reports the malformed URL in its own words.
        Err(_) => return Connection::connect(url, properties).await,
    };
    uri.query.frame_max.get_or_insert(CLIENT_FRAME_MAX);
    if has_credentials(url) {
        return Connection::connect_uri(uri, properties).await;
    }
    let (auth, mut refused) = ReportingAuth::new(sasl);
    tokio::select! {
        result = Connection::connect_uri(uri, properties.with_auth_provider(auth)) => result,
        Ok(()) = refused.changed() => {
            let reason = refused.borrow().clone().unwrap_or_default();
            Err(ErrorKind::AuthProviderError(reason).into())
        }
    }
}

/// Declares a server-named queue that belongs to this connection and goes with it
/// (exclusive, auto-delete): reply queues and event watchers. Returns its name.
pub async fn private_queue(
    channel: &lapin::Channel,
    arguments: lapin::types::FieldTable,
) -> lapin::Result<ShortString> {
    let options = lapin::options::QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel.queue_declare("".into(), options, arguments).await?;
    Ok(queue.name().clone())
}

/// The SASL client, reporting its own refusals so the connect can end at once.
struct ReportingAuth {
    inner: SaslClient,
    refused: watch::Sender<Option<String>>,
}

impl ReportingAuth {
    fn new(inner: SaslClient) -> (Self, watch::Receiver<Option<String>>) {
        let (refused, rx) = watch::channel(None);
        (Self { inner, refused }, rx)
    }
}

impl AuthProvider for ReportingAuth {
    fn mechanism(&self) -> ShortString {
        self.inner.mechanism()
    }

    fn auth_starter(&self) -> Result<LongString, String> {
        self.inner.auth_starter()
    }

    fn continue_auth(&self, challenge: LongString) -> Result<LongString, String> {
        let answer = self.inner.continue_auth(challenge);
        if let Err(reason) = &answer {
            self.refused.send_replace(Some(reason.clone()));
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::{has_credentials, redact};

    #[test]
    fn credentials_are_read_from_the_authority_only() {
        assert!(has_credentials("amqp://guest:guest@127.0.0.1:5672/%2f"));
        assert!(!has_credentials("amqp://127.0.0.1:5672"));
        assert!(!has_credentials("amqp://127.0.0.1:5672/%2f?x=a@b"));
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("amqp://minion:s3cret@rabbit:5672/%2f"),
            "amqp://minion:***@rabbit:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }
}
