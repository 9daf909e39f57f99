//! Logins: which mechanisms are offered, PLAIN and AMQPLAIN against the configured
//! users, and the `DISPATCH-ED25519` proof checked for the [`KeyAuthority`].
//!
//! Only what can succeed is offered: clients pick the first mechanism they know from the
//! broker's list, so an advertised but unusable one would lock them out. The key
//! mechanism's exchange of `secure`/`secure-ok` is driven by
//! [`super::handshake`](mod@super::handshake); this module only judges what arrives.

use crate::codec::table::check_table_body;
use crate::config::{BrokerConfig, User};
use crate::identity::{KeyAuthority, Permissions};
use amq_protocol::types::{AMQPValue, FieldTable};
use dispatch_common::keys::PublicKey;
use dispatch_common::sasl::{self, Challenge, Proof};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The password mechanisms, offered when at least one user is configured.
pub const PASSWORD_MECHANISMS: [&str; 2] = ["PLAIN", "AMQPLAIN"];

/// Who logged in: the name `user_id` is checked against, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub permissions: Permissions,
}

/// The mechanisms offered in `connection.start`, space-separated as the spec asks:
/// `DISPATCH-ED25519` with a key authority, `PLAIN AMQPLAIN` with users.
pub fn offered_mechanisms(config: &BrokerConfig) -> String {
    let key = config.key_authority.as_ref().map(|_| sasl::MECHANISM);
    let passwords = (!config.users.is_empty()).then_some(PASSWORD_MECHANISMS);
    key.into_iter()
        .chain(passwords.into_iter().flatten())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `mechanism` is in the space-separated `offered` list.
pub fn is_offered(offered: &str, mechanism: &str) -> bool {
    offered.split(' ').any(|m| m == mechanism)
}

/// The refusal of a mechanism that was not offered.
pub fn unsupported(mechanism: &str, offered: &str) -> String {
    format!("unsupported authentication mechanism '{mechanism}'; this broker offers {offered}")
}

/// Checks a PLAIN or AMQPLAIN `connection.start-ok` response; returns the login, or the
/// reason for refusing (sent to the client with 403 ACCESS_REFUSED).
pub fn authenticate(
    mechanism: &str,
    response: &[u8],
    peer: IpAddr,
    users: &[User],
) -> Result<Login, String> {
    let (name, password) = match mechanism {
        "PLAIN" => plain(response),
        "AMQPLAIN" => amqplain(response),
        other => return Err(unsupported(other, &PASSWORD_MECHANISMS.join(" "))),
    }
    .ok_or_else(|| format!("malformed {mechanism} response"))?;
    let refused = || {
        format!(
            "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
        )
    };
    let user = users.iter().find(|u| u.name == name).ok_or_else(refused)?;
    if !constant_time_eq(user.password.as_bytes(), password.as_bytes()) {
        return Err(refused());
    }
    if user.loopback_only && !peer.is_loopback() {
        return Err(format!(
            "user '{name}' can only connect via localhost; configure another user for remote clients"
        ));
    }
    Ok(Login {
        user: name,
        permissions: user.permissions.clone(),
    })
}

/// Checks a `DISPATCH-ED25519` proof (the `secure-ok` response) against the challenge
/// this handshake sent, then asks `authority` to admit its key. `admit` may block (the
/// master records pending keys on disk), so it runs on the blocking pool.
pub async fn authenticate_key(
    authority: &Arc<dyn KeyAuthority>,
    response: &[u8],
    challenge: &Challenge,
    peer: SocketAddr,
) -> Result<Login, String> {
    let (proof, key) = Proof::verify(response, challenge)?;
    admit_key(authority, proof, key, peer).await
}

/// Asks `authority` to admit a verified proof's key (on the blocking pool: `admit` may
/// block, the master records pending keys on disk).
pub async fn admit_key(
    authority: &Arc<dyn KeyAuthority>,
    proof: Proof,
    key: PublicKey,
    peer: SocketAddr,
) -> Result<Login, String> {
    let authority = authority.clone();
    let admitted = tokio::task::spawn_blocking(move || {
        let permissions = authority.admit(&proof, &key, peer)?;
        Ok(Login {
            user: proof.id,
            permissions,
        })
    })
    .await;
    admitted.unwrap_or_else(|e| {
        tracing::error!(%peer, "the key authority failed: {e}");
        Err("the broker could not check this key; see its log".to_owned())
    })
}

/// PLAIN (RFC 4616): `[authzid] NUL authcid NUL password`.
fn plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|&b| b == 0);
    let _authzid = parts.next()?;
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    parts
        .next()
        .is_none()
        .then(|| (name.to_owned(), password.to_owned()))
}

/// AMQPLAIN: a field table body (no length prefix) with `LOGIN` and `PASSWORD`.
fn amqplain(response: &[u8]) -> Option<(String, String)> {
    check_table_body(response).ok()?;
    let mut framed = u32::try_from(response.len()).ok()?.to_be_bytes().to_vec();
    framed.extend_from_slice(response);
    let (_, table): (_, FieldTable) =
        amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
    let text = |key: &str| match table.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    };
    Some((text("LOGIN")?, text("PASSWORD")?))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_common::keys::{KeyPair, PublicKey};
    use dispatch_common::rpc::Role;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn guest_is_accepted_from_loopback_only() {
        let users = [User::guest()];
        assert_eq!(
            authenticate("PLAIN", b"\0guest\0guest", LOOPBACK, &users).map(|l| l.user),
            Ok("guest".to_owned())
        );
        let remote = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert!(
            authenticate("PLAIN", b"\0guest\0guest", remote, &users)
                .unwrap_err()
                .contains("localhost")
        );
    }

    #[test]
    fn wrong_password_and_unknown_mechanism_are_refused() {
        let users = [User::guest()];
        assert!(authenticate("PLAIN", b"\0guest\0nope", LOOPBACK, &users).is_err());
        assert!(
            authenticate("EXTERNAL", b"", LOOPBACK, &users)
                .unwrap_err()
                .contains("PLAIN AMQPLAIN")
        );
    }

    struct Nobody(PublicKey);

    impl KeyAuthority for Nobody {
        fn broker_key(&self) -> PublicKey {
            self.0
        }
        fn admit(&self, _: &Proof, _: &PublicKey, _: SocketAddr) -> Result<Permissions, String> {
            Err("nobody is admitted".into())
        }
    }

    #[test]
    fn only_usable_mechanisms_are_offered() {
        let mut config = BrokerConfig::default();
        assert_eq!(offered_mechanisms(&config), "PLAIN AMQPLAIN");
        config.key_authority = Some(Arc::new(Nobody(KeyPair::generate().public())));
        let both = offered_mechanisms(&config);
        assert_eq!(both, "DISPATCH-ED25519 PLAIN AMQPLAIN");
        assert!(is_offered(&both, "AMQPLAIN") && !is_offered(&both, "EXTERNAL"));
        config.users.clear();
        assert_eq!(offered_mechanisms(&config), sasl::MECHANISM);
    }

    #[tokio::test]
    async fn a_proof_for_another_challenge_never_reaches_the_authority() {
        let broker = KeyPair::generate().public();
        let authority: Arc<dyn KeyAuthority> = Arc::new(Nobody(broker));
        let pair = KeyPair::generate();
        let peer = SocketAddr::from((LOOPBACK, 1));
        let signed = Challenge::new(broker);
        let proof = Proof::sign(&pair, "web.01", Role::Minion, &[], &signed).encode();
        let replayed = authenticate_key(&authority, &proof, &Challenge::new(broker), peer).await;
        assert!(
            replayed
                .unwrap_err()
                .contains("bad DISPATCH-ED25519 signature")
        );
        let fresh = authenticate_key(&authority, &proof, &signed, peer).await;
        assert_eq!(fresh, Err("nobody is admitted".to_owned()));
    }

    #[test]
    fn amqplain_reads_login_and_password() {
        let mut body = Vec::new();
        for (k, v) in [("LOGIN", "guest"), ("PASSWORD", "guest")] {
            body.push(k.len() as u8);
            body.extend_from_slice(k.as_bytes());
            body.push(b'S');
            body.extend_from_slice(&(v.len() as u32).to_be_bytes());
            body.extend_from_slice(v.as_bytes());
        }
        let login = authenticate("AMQPLAIN", &body, LOOPBACK, &[User::guest()]).unwrap();
        assert_eq!(
            (login.user.as_str(), login.permissions),
            ("guest", Permissions::Full)
        );
    }
}
