//! Key requests of minions (and of operators away from the master host) on an external
//! broker (RabbitMQ), from
//! [`KEY_REQUESTS_QUEUE`](dispatch_common::names::KEY_REQUESTS_QUEUE).
//!
//! On the embedded broker a client's SASL login tells the registry who it is; on an
//! external broker the master never sees the login, so the client publishes a
//! [`KeyRequest`] at every connect instead, signed with the key it asks for. The request
//! goes through the same registry decision as a login: pending, accepted (auto-accept),
//! or denied when the id already has another key. A request older or newer than
//! [`REQUEST_WINDOW`] is dropped, so an old captured one cannot resurrect a deleted key
//! long after.

use crate::authority::{Accepted, SharedRegistry};
use crate::registry::Admission;
use dispatch_common::envelope::{Envelope, domain};
use dispatch_common::keys::PublicKey;
use dispatch_common::message::{KeyRequest, now_ms};
use dispatch_common::names::check_name;
use dispatch_common::sasl::MAX_GROUPS;
use std::time::Duration;

/// How far a request's time may be from the master's clock.
pub const REQUEST_WINDOW: Duration = Duration::from_secs(600);

/// Checks a key request: signed under its domain by the key it carries, by the id it
/// names, with valid names and a recent time.
pub fn verify(bytes: &[u8], now: u64) -> Result<(KeyRequest, PublicKey), String> {
    let envelope = Envelope::decode(bytes).map_err(|e| e.to_string())?;
    let key = envelope.claimed_key().map_err(|e| e.to_string())?;
    let request: KeyRequest = envelope
        .open(domain::KEY_REQUEST, &key)
        .map_err(|e| e.to_string())?;
    if request.id != envelope.signer {
        return Err(format!(
            "'{}' signed a request for '{}'",
            envelope.signer, request.id
        ));
    }
    check_name("id", &request.id).map_err(|e| e.to_string())?;
    if request.groups.len() > MAX_GROUPS {
        return Err(format!("more than {MAX_GROUPS} groups"));
    }
    for group in &request.groups {
        check_name("group", group).map_err(|e| e.to_string())?;
    }
    if now.abs_diff(request.at_ms) > REQUEST_WINDOW.as_millis() as u64 {
        return Err(format!(
            "request of '{}' is too old or from the future",
            request.id
        ));
    }
    Ok((request, key))
}

/// Records a key request in the registry.
pub fn record(bytes: &[u8], registry: &SharedRegistry, accepted: &Accepted) {
    let (request, key) = match verify(bytes, now_ms()) {
        Ok(verified) => verified,
        Err(reason) => return tracing::warn!("dropped a key request: {reason}"),
    };
    let decided = registry
        .lock()
        .admit(&request.id, request.role, &key, &request.groups);
    match decided {
        Ok((Admission::Admitted(_), Some(record))) => accepted.push(record),
        Ok((Admission::Admitted(_), None)) => {}
        Ok((Admission::Refused(reason), _)) => {
            tracing::info!(id = %request.id, "key request: {reason}");
        }
        Err(e) => tracing::error!("key registry: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_common::keys::KeyPair;
    use dispatch_common::rpc::Role;

    fn request(id: &str, at_ms: u64) -> KeyRequest {
        KeyRequest {
            id: id.into(),
            role: Role::Minion,
            groups: vec!["web".into()],
            at_ms,
        }
    }

    #[test]
    fn a_self_signed_recent_request_passes() {
        let pair = KeyPair::generate();
        let bytes = Envelope::seal(
            domain::KEY_REQUEST,
            &pair,
            "web.01",
            &request("web.01", 1_000),
        );
        let (request, key) = verify(&bytes, 2_000).unwrap();
        assert_eq!((request.id.as_str(), key), ("web.01", pair.public()));
    }

    #[test]
    fn stale_mismatched_or_wrongly_signed_requests_are_dropped() {
        let pair = KeyPair::generate();
        let stale = Envelope::seal(domain::KEY_REQUEST, &pair, "web.01", &request("web.01", 0));
        assert!(verify(&stale, 3_600_000).unwrap_err().contains("too old"));
        let other = Envelope::seal(domain::KEY_REQUEST, &pair, "web.02", &request("web.01", 0));
        assert!(verify(&other, 0).is_err());
        let domain = Envelope::seal(domain::REPLY, &pair, "web.01", &request("web.01", 0));
        assert!(verify(&domain, 0).is_err());
        let bad = Envelope::seal(domain::KEY_REQUEST, &pair, "web/..", &request("web/..", 0));
        assert!(verify(&bad, 0).is_err());
    }
}
