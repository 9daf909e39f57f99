//! Connecting to the master's broker: authentication, the broker-key check, trust on
//! first use, and the reconnect backoff.
//!
//! On the embedded broker the minion logs in with `DISPATCH-ED25519` (its key signs the
//! broker's nonce); when a master key is pinned, a broker presenting any other key fails
//! the login before anything is signed, and [`ConnectError::MasterKeyChanged`] stops the
//! daemon. On an external broker (URL with `user:password`) lapin's PLAIN login is used.
//! Any other failure (refused login while the key is pending, broker down, …) is
//! retried forever by the caller, with [`Backoff`] between attempts.

use crate::config::{CONNECT_TIMEOUT, Config, RECONNECT_INITIAL};
use crate::pin::Trust;
use dispatch_common::keys::{KeyPair, PublicKey};
use dispatch_common::rpc::Role;
use dispatch_common::sasl::{BROKER_KEY_MISMATCH, SaslClient};
use lapin::Connection;
use std::time::Duration;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The broker presents another key than the pinned master key: fatal.
    #[error(
        "the master key changed: the broker presents key {got}, but the pinned master key is \
         {expected} (expected {expected}, got {got}); if the master was re-keyed on purpose, \
         remove {pin} and restart"
    )]
    MasterKeyChanged {
        expected: String,
        got: String,
        pin: String,
    },
    #[error("cannot connect to {url}: {source}")]
    Lapin { url: String, source: lapin::Error },
    #[error("cannot connect to {url}: no answer within {}", humantime::format_duration(*timeout))]
    TimedOut { url: String, timeout: Duration },
}

impl ConnectError {
    /// Whether retrying cannot help.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ConnectError::MasterKeyChanged { .. })
    }
}

/// An open connection, with the key the broker presented (SASL only).
pub struct Connected {
    pub connection: Connection,
    pub broker_key: Option<PublicKey>,
}

/// Opens one connection as `config.id`. Cancel-safe (nothing is kept on drop).
pub async fn connect(
    config: &Config,
    pair: &KeyPair,
    trust: &Trust,
) -> Result<Connected, ConnectError> {
    let name = format!("dispatch-minion {}", config.id);
    let url = dispatch_common::client::redact(&config.master);
    let expected = trust.expected_broker().filter(|_| !config.external_broker);
    let sasl = SaslClient::new(pair.clone(), &config.id, Role::Minion, &config.groups)
        .expect_broker(expected);
    let result = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        dispatch_common::client::connect(&config.master, sasl.clone(), &name),
    )
    .await
    {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(ConnectError::Lapin {
            url: url.clone(),
            source,
        }),
        Err(_) => Err(ConnectError::TimedOut {
            url: url.clone(),
            timeout: CONNECT_TIMEOUT,
        }),
    };
    let seen = sasl.seen_broker();
    // A broker key other than the pinned one is the fatal case, whatever the error.
    let mismatch = match (&result, expected, seen) {
        (_, Some(expected), Some(got)) if expected != got => Some(got),
        (Err(e), Some(_), Some(got)) if e.to_string().contains(BROKER_KEY_MISMATCH) => Some(got),
        _ => None,
    };
    if let (Some(got), Some(expected)) = (mismatch, expected) {
        if let Ok(connected) = &result {
            let _ = connected.close(403, "master key mismatch".into()).await;
        }
        return Err(ConnectError::MasterKeyChanged {
            expected: expected.fingerprint().to_string(),
            got: got.fingerprint().to_string(),
            pin: trust.path().display().to_string(),
        });
    }
    Ok(Connected {
        connection: result?,
        broker_key: seen,
    })
}

/// Exponential backoff with jitter: each delay is drawn between half and all of the
/// current step; the step starts at [`RECONNECT_INITIAL`] and doubles up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Self {
            step: RECONNECT_INITIAL.min(max),
            max,
        }
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        step.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// Back to the first step, after a session that went well.
    pub fn reset(&mut self) {
        self.step = RECONNECT_INITIAL.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_grows_to_its_cap_with_jitter_and_resets() {
        let max = Duration::from_secs(10);
        let mut backoff = Backoff::new(max);
        let first = backoff.next_delay();
        assert!(
            first >= RECONNECT_INITIAL / 2 && first <= RECONNECT_INITIAL,
            "{first:?}"
        );
        let delays: Vec<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= max));
        assert!(delays.last().unwrap() >= &(max / 2));
        backoff.reset();
        assert!(backoff.next_delay() <= RECONNECT_INITIAL);
    }
}
