//! The signed messages between master and minions: commands and replies.
//!
//! Both travel inside an [`Envelope`](crate::envelope::Envelope): commands under
//! [`domain::COMMAND`](crate::envelope::domain::COMMAND) signed by the master, replies
//! under [`domain::REPLY`](crate::envelope::domain::REPLY) signed by the minion they
//! name. Everything a receiver acts on (job id, target, issue time, expiry, minion id) is
//! inside the signed payload.

use crate::target::Target;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Milliseconds since the Unix epoch, the unit of every time in a message.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A job for the minions that `target` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// UUIDv7: job ids sort by time.
    pub job_id: Uuid,
    pub target: Target,
    pub issued_at_ms: u64,
    /// No minion starts the job once its clock has passed this.
    pub expires_at_ms: u64,
    pub exec: Exec,
    /// The minions this copy is for, as the master resolved the target: a copy that
    /// reaches any other queue (injected there, or a minion accepted later) is refused.
    /// Empty: every minion the target names.
    #[serde(default)]
    pub recipients: Vec<String>,
}

impl Command {
    /// Whether minion `id` with `groups` is to run this copy.
    pub fn is_for(&self, id: &str, groups: &[String]) -> bool {
        self.target.matches(id, groups)
            && (self.recipients.is_empty() || self.recipients.iter().any(|r| r == id))
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// The program and its arguments, run directly, or the one shell line when `shell`.
    pub argv: Vec<String>,
    /// Run through `/bin/sh -c`.
    pub shell: bool,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// How long the command may run before its process group is killed.
    pub timeout_ms: Option<u64>,
}

/// A minion's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub job_id: Uuid,
    pub minion: String,
    pub outcome: Outcome,
}

/// What became of a command on a minion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The command ran (or could not be started: see [`ExecResult::error`]).
    Finished(ExecResult),
    /// The minion would not run it: bad signature, expired, replayed, not for it.
    Refused { reason: String },
    /// The minion stopped while the command ran; it will not be run again.
    Interrupted,
}

/// The result of running a command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit status, when the process exited.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, when one did.
    pub signal: Option<i32>,
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
    /// Killed after the command's timeout.
    pub timed_out: bool,
    /// Why the command could not be run at all (e.g. "command not found").
    pub error: Option<String>,
}

impl ExecResult {
    /// Exited with status 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && self.error.is_none()
    }
}

/// What a minion announces on [`EVENTS_EXCHANGE`](crate::names::EVENTS_EXCHANGE) when it
/// comes up and at every heartbeat, signed under
/// [`domain::PRESENCE`](crate::envelope::domain::PRESENCE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub minion: String,
    pub groups: Vec<String>,
    pub version: String,
    pub at_ms: u64,
    /// False in the last announcement of a minion that is shutting down.
    pub up: bool,
}

/// A minion on an external broker asking for its key to be accepted, published to
/// [`KEY_REQUESTS_QUEUE`](crate::names::KEY_REQUESTS_QUEUE) at every connect and signed
/// under [`domain::KEY_REQUEST`](crate::envelope::domain::KEY_REQUEST) with the key it
/// asks for (so the master knows the sender holds it). On the embedded broker the SASL
/// login does the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRequest {
    pub id: String,
    pub role: crate::rpc::Role,
    pub groups: Vec<String>,
    pub at_ms: u64,
}
