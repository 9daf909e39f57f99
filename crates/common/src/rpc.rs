//! The master's request/response API, spoken by the CLI and other clients over the
//! master's RPC queue.
//!
//! A request is an [`Envelope`](crate::envelope::Envelope) under
//! [`domain::RPC`](crate::envelope::domain::RPC) signed by an accepted operator; it
//! carries a random nonce and an expiry, and the master remembers nonces until they
//! expire, so no request can be replayed. The response, signed by the master, echoes the
//! nonce so the caller can tie it to its request.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a request stays valid after it is made.
pub const REQUEST_LIFETIME: Duration = Duration::from_secs(60);

/// A signed request to the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; 16],
    pub expires_at_ms: u64,
    pub body: RequestBody,
}

impl Request {
    /// A fresh request valid for [`REQUEST_LIFETIME`].
    pub fn new(body: RequestBody) -> Self {
        Self {
            nonce: rand::random(),
            expires_at_ms: crate::message::now_ms() + REQUEST_LIFETIME.as_millis() as u64,
            body,
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestBody {
    ListKeys,
    /// Accept the pending keys of `ids`, or every pending key when `all`.
    AcceptKeys {
        ids: Vec<String>,
        all: bool,
    },
    RejectKey {
        id: String,
    },
    DeleteKey {
        id: String,
    },
}

/// The master's answer, signed, with the request's nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; 16],
    pub body: ResponseBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseBody {
    Keys(Vec<KeyInfo>),
    /// The request was carried out; one line per thing changed.
    Done(Vec<String>),
    /// The request was refused or failed; the text says why and what to do.
    Error(String),
}

/// Whose key it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Minion,
    Operator,
}

/// Where a key stands in the master's registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Waiting for `dispatch key accept`.
    Pending,
    Accepted,
    Rejected,
    /// A known id presented another key.
    Denied,
}

impl KeyState {
    pub const ALL: [KeyState; 4] = [
        KeyState::Pending,
        KeyState::Accepted,
        KeyState::Rejected,
        KeyState::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Accepted => "accepted",
            KeyState::Rejected => "rejected",
            KeyState::Denied => "denied",
        }
    }
}

/// One key of the registry, as `dispatch key list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    pub role: Role,
    pub state: KeyState,
    pub fingerprint: String,
    pub groups: Vec<String>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}
