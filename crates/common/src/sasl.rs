//! `DISPATCH-ED25519`: the SASL mechanism in which a client proves it holds its key.
//!
//! 1. The client names the mechanism in `connection.start-ok`; its initial response is
//!    its id (for the broker's log only).
//! 2. The broker answers `connection.secure` with a [`Challenge`]: 32 fresh random bytes
//!    and the broker's public key (the embedded broker uses the master's).
//! 3. The client answers `connection.secure-ok` with a [`Proof`]: its id, role, groups,
//!    public key, and a signature under [`domain::SASL`] over the nonce, the broker's
//!    key and those fields. A nonce serves one handshake only, so a proof cannot be
//!    replayed later, and it names the broker's key, so a broker with another key
//!    cannot use it. The broker does not prove it holds its key: without TLS, a relay
//!    that passes the real broker's challenge through is not detected here. Commands
//!    and replies stay safe regardless, because they are signed end to end.
//!
//! [`SaslClient`] is the client half, plugged into lapin as its auth provider.

use crate::envelope::domain;
use crate::keys::{KeyPair, PublicKey};
use crate::names::check_name;
use crate::rpc::Role;
use lapin::auth::AuthProvider;
use lapin::types::{LongString, ShortString};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// The mechanism's name in `connection.start`.
pub const MECHANISM: &str = "DISPATCH-ED25519";

/// Largest proof the broker reads (an id and its groups are short strings).
pub const MAX_PROOF_BYTES: usize = 64 * 1024;

/// Most groups a minion may ask for.
pub const MAX_GROUPS: usize = 64;

const NONCE_BYTES: usize = 32;

/// What the broker sends in `connection.secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    pub nonce: [u8; NONCE_BYTES],
    pub broker: PublicKey,
}

impl Challenge {
    /// A fresh challenge from `broker`.
    pub fn new(broker: PublicKey) -> Self {
        Self {
            nonce: rand::random(),
            broker,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        [&self.nonce[..], &self.broker.to_bytes()[..]].concat()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != NONCE_BYTES + 32 {
            return None;
        }
        let (nonce, broker) = bytes.split_at(NONCE_BYTES);
        Some(Self {
            nonce: nonce.try_into().ok()?,
            broker: PublicKey::from_bytes(broker)?,
        })
    }
}

/// What the client sends in `connection.secure-ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub id: String,
    pub role: Role,
    pub groups: Vec<String>,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// The bytes a proof's signature covers.
#[derive(Serialize)]
struct Signed<'a> {
    #[serde(with = "serde_bytes")]
    nonce: &'a [u8],
    #[serde(with = "serde_bytes")]
    broker: &'a [u8],
    id: &'a str,
    role: Role,
    groups: &'a [String],
}

fn signed_bytes(challenge: &Challenge, id: &str, role: Role, groups: &[String]) -> Vec<u8> {
    rmp_serde::to_vec(&Signed {
        nonce: &challenge.nonce,
        broker: &challenge.broker.to_bytes(),
        id,
        role,
        groups,
    })
    .expect("proofs always encode")
}

impl Proof {
    /// Signs `challenge` as `id`.
    pub fn sign(
        pair: &KeyPair,
        id: &str,
        role: Role,
        groups: &[String],
        challenge: &Challenge,
    ) -> Self {
        let signed = signed_bytes(challenge, id, role, groups);
        Self {
            id: id.to_owned(),
            role,
            groups: groups.to_vec(),
            key: pair.public().to_bytes().to_vec(),
            signature: pair.sign(domain::SASL, &signed).to_vec(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("proofs always encode")
    }

    /// Decodes and checks a proof against the challenge this broker sent: the names
    /// follow the grammar and the signature is good. Returns the proof and the key it
    /// proves; whether that key may connect is the registry's decision.
    pub fn verify(bytes: &[u8], challenge: &Challenge) -> Result<(Proof, PublicKey), String> {
        if bytes.len() > MAX_PROOF_BYTES {
            return Err(format!(
                "{MECHANISM} response larger than {MAX_PROOF_BYTES} bytes"
            ));
        }
        let proof: Proof = rmp_serde::from_slice(bytes)
            .map_err(|e| format!("malformed {MECHANISM} response: {e}"))?;
        check_name("id", &proof.id).map_err(|e| e.to_string())?;
        if proof.groups.len() > MAX_GROUPS {
            return Err(format!("more than {MAX_GROUPS} groups"));
        }
        for group in &proof.groups {
            check_name("group", group).map_err(|e| e.to_string())?;
        }
        let key = PublicKey::from_bytes(&proof.key)
            .ok_or_else(|| format!("{MECHANISM} response carries an invalid public key"))?;
        let signed = signed_bytes(challenge, &proof.id, proof.role, &proof.groups);
        if !key.verify(domain::SASL, &signed, &proof.signature) {
            return Err(format!("bad {MECHANISM} signature for '{}'", proof.id));
        }
        Ok((proof, key))
    }
}

/// The client half of the mechanism, for `ConnectionProperties::with_auth_provider`.
///
/// With an expected broker key (a minion's pinned master key), a challenge from any
/// other key fails the connection before anything is signed.
#[derive(Clone)]
pub struct SaslClient {
    pair: KeyPair,
    id: String,
    role: Role,
    groups: Vec<String>,
    expected_broker: Option<PublicKey>,
    seen_broker: Arc<Mutex<Option<PublicKey>>>,
}

impl SaslClient {
    pub fn new(pair: KeyPair, id: &str, role: Role, groups: &[String]) -> Self {
        Self {
            pair,
            id: id.to_owned(),
            role,
            groups: groups.to_vec(),
            expected_broker: None,
            seen_broker: Arc::default(),
        }
    }

    /// Refuse to authenticate to a broker whose key is not `key`.
    pub fn expect_broker(mut self, key: Option<PublicKey>) -> Self {
        self.expected_broker = key;
        self
    }

    /// The broker key of the last challenge, shared with every clone.
    pub fn seen_broker(&self) -> Option<PublicKey> {
        *self.seen_broker.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The text of the client-side error when the broker's key is not the expected one;
/// callers match on it to tell a changed master key from other failures.
pub const BROKER_KEY_MISMATCH: &str = "broker key mismatch";

impl AuthProvider for SaslClient {
    fn mechanism(&self) -> ShortString {
        MECHANISM.into()
    }

    fn auth_starter(&self) -> Result<LongString, String> {
        Ok(self.id.as_bytes().to_vec().into())
    }

    fn continue_auth(&self, challenge: LongString) -> Result<LongString, String> {
        let challenge = Challenge::decode(challenge.as_bytes())
            .ok_or_else(|| format!("malformed {MECHANISM} challenge from the broker"))?;
        *self.seen_broker.lock().unwrap_or_else(|e| e.into_inner()) = Some(challenge.broker);
        if let Some(expected) = self.expected_broker
            && expected != challenge.broker
        {
            return Err(format!(
                "{BROKER_KEY_MISMATCH}: the broker presents key {}, but the pinned master key is {}",
                challenge.broker.fingerprint(),
                expected.fingerprint()
            ));
        }
        let proof = Proof::sign(&self.pair, &self.id, self.role, &self.groups, &challenge);
        Ok(proof.encode().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_against_its_own_challenge_only() {
        let broker = KeyPair::generate().public();
        let pair = KeyPair::generate();
        let groups = vec!["web".to_string()];
        let challenge = Challenge::new(broker);
        let bytes = Proof::sign(&pair, "web.01", Role::Minion, &groups, &challenge).encode();
        let (proof, key) = Proof::verify(&bytes, &challenge).unwrap();
        assert_eq!((proof.id.as_str(), key), ("web.01", pair.public()));
        let replayed = Proof::verify(&bytes, &Challenge::new(broker));
        assert!(replayed.unwrap_err().contains("bad"));
        let relayed = Challenge {
            broker: KeyPair::generate().public(),
            ..challenge
        };
        assert!(Proof::verify(&bytes, &relayed).is_err());
    }

    #[test]
    fn bad_names_in_a_proof_are_refused() {
        let challenge = Challenge::new(KeyPair::generate().public());
        let bytes = Proof::sign(&KeyPair::generate(), "web.*", Role::Minion, &[], &challenge);
        assert!(
            Proof::verify(&bytes.encode(), &challenge)
                .unwrap_err()
                .contains("invalid id")
        );
    }

    #[test]
    fn the_client_refuses_an_unexpected_broker() {
        let pinned = KeyPair::generate().public();
        let client = SaslClient::new(KeyPair::generate(), "web.01", Role::Minion, &[])
            .expect_broker(Some(pinned));
        let other = Challenge::new(KeyPair::generate().public());
        let err = client.continue_auth(other.encode().into()).unwrap_err();
        assert!(err.contains(BROKER_KEY_MISMATCH));
        assert_eq!(client.seen_broker(), Some(other.broker));
        let answer = client.continue_auth(Challenge::new(pinned).encode().into());
        assert!(answer.is_ok());
    }
}
