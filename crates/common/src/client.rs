//! How every dispatch process connects to a broker.
//!
//! A URL with credentials (`amqp://user:password@host:5672/%2f`, e.g. RabbitMQ) logs in
//! with PLAIN; one without (`amqp://host:5672`, the embedded broker) logs in with the
//! process's key through [`SaslClient`].

use crate::sasl::SaslClient;
use lapin::{Connection, ConnectionProperties};

/// Whether `url` names a user and password.
pub fn has_credentials(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority.contains('@')
}

/// Connects to `url`, with `sasl` unless the URL carries credentials. `name` is the
/// connection name the broker shows.
pub async fn connect(url: &str, sasl: SaslClient, name: &str) -> lapin::Result<Connection> {
    let mut properties = ConnectionProperties::default().with_connection_name(name.into());
    if !has_credentials(url) {
        properties = properties.with_auth_provider(sasl);
    }
    Connection::connect(url, properties).await
}

#[cfg(test)]
mod tests {
    use super::has_credentials;

    #[test]
    fn credentials_are_read_from_the_authority_only() {
        assert!(has_credentials("amqp://guest:guest@127.0.0.1:5672/%2f"));
        assert!(!has_credentials("amqp://127.0.0.1:5672"));
        assert!(!has_credentials("amqp://127.0.0.1:5672/%2f?x=a@b"));
    }
}
