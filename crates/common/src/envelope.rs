//! The signed envelope every command, reply and RPC message travels in, whatever the
//! broker.
//!
//! An envelope is msgpack: the payload (itself msgpack bytes), the signer's id, the
//! signer's public key and an ed25519 signature over a domain tag and the payload. The
//! receiver decides which key it expects (the pinned master key, the accepted key of
//! the minion named, an accepted operator) and [`Envelope::open`] checks the signature
//! with that key before a single payload field is read. AMQP properties and headers are
//! never trusted.

use crate::keys::{KeyPair, PublicKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Signature domains: every signature covers one of these tags, then its payload.
pub mod domain {
    /// Commands, master → minion.
    pub const COMMAND: &str = "dispatch/command/v1";
    /// Replies, minion → master.
    pub const REPLY: &str = "dispatch/reply/v1";
    /// Requests to the master's RPC API, signed by operators.
    pub const RPC: &str = "dispatch/rpc/v1";
    /// The master's answers to RPC requests.
    pub const RPC_RESPONSE: &str = "dispatch/rpc-response/v1";
    /// Events the master raises on the events exchange (a job was published).
    pub const EVENT: &str = "dispatch/event/v1";
    /// Minion presence announcements (up, heartbeat, down).
    pub const PRESENCE: &str = "dispatch/presence/v1";
    /// Key requests of minions on an external broker, signed with the key they ask for.
    pub const KEY_REQUEST: &str = "dispatch/key-request/v1";
    /// The SASL proof of a connecting client.
    pub const SASL: &str = "dispatch/sasl/v1";
}

/// Largest envelope accepted from the network (replies carry up to 1 MiB of stdout and
/// 1 MiB of stderr; a command's argv and environment are far smaller).
pub const MAX_ENVELOPE_BYTES: usize = 4 * 1024 * 1024;

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message of {0} bytes is larger than the {MAX_ENVELOPE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("message is not a dispatch envelope: {0}")]
    Malformed(String),
    #[error("message is signed by key {got}, not by the expected key {expected}")]
    WrongKey { got: String, expected: String },
    #[error("bad signature from '{0}'")]
    BadSignature(String),
    #[error("signed payload does not decode: {0}")]
    BadPayload(String),
}

/// A decoded but not yet verified envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub signer: String,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Envelope {
    /// Signs `message` as `signer` under `domain` and encodes the envelope.
    pub fn seal<T: Serialize>(domain: &str, pair: &KeyPair, signer: &str, message: &T) -> Vec<u8> {
        let payload = rmp_serde::to_vec_named(message).expect("messages always encode");
        let envelope = Envelope {
            signature: pair.sign(domain, &payload).to_vec(),
            key: pair.public().to_bytes().to_vec(),
            signer: signer.to_owned(),
            payload,
        };
        rmp_serde::to_vec_named(&envelope).expect("envelopes always encode")
    }

    /// Decodes an envelope from the network, bounded before anything is allocated.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        rmp_serde::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    /// The public key the envelope claims to be signed with (not yet verified).
    pub fn claimed_key(&self) -> Result<PublicKey, EnvelopeError> {
        PublicKey::from_bytes(&self.key)
            .ok_or_else(|| EnvelopeError::Malformed("invalid public key".into()))
    }

    /// Checks that the envelope is signed under `domain` by `expected`, then decodes
    /// the payload.
    pub fn open<T: DeserializeOwned>(
        &self,
        domain: &str,
        expected: &PublicKey,
    ) -> Result<T, EnvelopeError> {
        let claimed = self.claimed_key()?;
        if claimed != *expected {
            return Err(EnvelopeError::WrongKey {
                got: claimed.fingerprint().to_string(),
                expected: expected.fingerprint().to_string(),
            });
        }
        if !expected.verify(domain, &self.payload, &self.signature) {
            return Err(EnvelopeError::BadSignature(self.signer.clone()));
        }
        rmp_serde::from_slice(&self.payload).map_err(|e| EnvelopeError::BadPayload(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Hello {
        text: String,
    }

    fn hello() -> Hello {
        Hello { text: "hi".into() }
    }

    #[test]
    fn a_sealed_message_opens_with_the_signers_key() {
        let pair = KeyPair::generate();
        let bytes = Envelope::seal(domain::COMMAND, &pair, "master", &hello());
        let envelope = Envelope::decode(&bytes).unwrap();
        assert_eq!(envelope.signer, "master");
        let opened: Hello = envelope.open(domain::COMMAND, &pair.public()).unwrap();
        assert_eq!(opened, hello());
    }

    #[test]
    fn another_key_another_domain_or_a_tampered_payload_is_refused() {
        let pair = KeyPair::generate();
        let bytes = Envelope::seal(domain::COMMAND, &pair, "master", &hello());
        let envelope = Envelope::decode(&bytes).unwrap();
        let other = KeyPair::generate().public();
        assert!(matches!(
            envelope.open::<Hello>(domain::COMMAND, &other),
            Err(EnvelopeError::WrongKey { .. })
        ));
        assert!(matches!(
            envelope.open::<Hello>(domain::REPLY, &pair.public()),
            Err(EnvelopeError::BadSignature(_))
        ));
        let mut tampered = envelope.clone();
        *tampered.payload.last_mut().unwrap() ^= 1;
        assert!(matches!(
            tampered.open::<Hello>(domain::COMMAND, &pair.public()),
            Err(EnvelopeError::BadSignature(_))
        ));
    }

    #[test]
    fn garbage_and_oversized_input_are_errors() {
        assert!(matches!(
            Envelope::decode(b"\xc1garbage"),
            Err(EnvelopeError::Malformed(_))
        ));
        let big = vec![0; MAX_ENVELOPE_BYTES + 1];
        assert!(matches!(
            Envelope::decode(&big),
            Err(EnvelopeError::TooLarge(_))
        ));
    }
}
