//! The master's request/response API, spoken by the CLI and other clients over the
//! master's RPC queue.
//!
//! A request is an [`Envelope`](crate::envelope::Envelope) under
//! [`domain::RPC`](crate::envelope::domain::RPC) signed by an accepted operator; it
//! carries a random nonce and an expiry, and the master remembers nonces until they
//! expire, so no request can be replayed. The response, signed by the master, echoes the
//! nonce so the caller can tie it to its request.

use crate::message::{Exec, Outcome, Reply};
use crate::target::Target;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

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
    /// Run a command on the minions a target names; the master answers with
    /// [`ResponseBody::Started`], then streams [`ResponseBody::Return`]s and ends with a
    /// [`ResponseBody::Summary`] (only `Started` when `detach`).
    Run(RunSpec),
    /// The accepted minions and whether they are connected.
    Minions,
    /// One job by id, an unambiguous prefix (8+ hex digits) or suffix; with `wait_ms`,
    /// answered once every expected minion has answered or expired, or when it passes.
    Job {
        id: String,
        wait_ms: Option<u64>,
    },
    /// Recent jobs, newest first.
    Jobs(JobQuery),
    /// Create a schedule; answered with its next three fire times.
    AddSchedule(ScheduleSpec),
    /// Every schedule, or the one named.
    Schedules {
        name: Option<String>,
    },
    RemoveSchedule {
        name: String,
    },
    PauseSchedule {
        name: String,
    },
    ResumeSchedule {
        name: String,
    },
    /// Fire a schedule now, outside its times (answered with the job's `Started`).
    RunSchedule {
        name: String,
    },
}

/// A schedule as an operator defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub name: String,
    /// Cron expression: 5 fields, 6 with seconds first, or an alias such as `@daily`.
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub tz: String,
    /// What each firing runs (`detach` is ignored: a firing has no caller).
    pub run: RunSpec,
    pub overlap: OverlapPolicy,
    pub missed: MissedPolicy,
    /// Start each firing after a random delay below this.
    pub splay_ms: Option<u64>,
}

/// Whether a firing may start while the previous one still runs on online minions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Record the firing as skipped while online minions still run the previous one.
    #[default]
    Skip,
    /// Fire anyway.
    Allow,
}

/// What happens to fire times that passed while the master was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedPolicy {
    /// Record them as skipped, once, and wait for the next fire time.
    #[default]
    Skip,
    /// Fire once now, whatever their number.
    RunOnce,
}

/// A schedule as `dispatch schedule list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleInfo {
    pub spec: ScheduleSpec,
    pub paused: bool,
    pub created_at_ms: u64,
    /// The next fire times (none while paused).
    pub next_runs_ms: Vec<u64>,
    pub last_fired_ms: Option<u64>,
    pub last_job: Option<Uuid>,
    /// What became of the last firing: skipped, or its job's states.
    pub last_outcome: Option<String>,
}

/// What `dispatch jobs` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobQuery {
    pub limit: u32,
    /// Only jobs submitted at or after this time.
    pub since_ms: Option<u64>,
    /// Only jobs whose target, as typed, matches this topic pattern (`web.*`).
    pub target: Option<String>,
    /// Only jobs with at least one minion in this state.
    pub status: Option<MinionState>,
}

/// What `dispatch run` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub target: Target,
    pub exec: Exec,
    /// How long the caller waits for online minions.
    pub wait_ms: u64,
    /// How long the command waits in an offline minion's queue.
    pub ttl_ms: u64,
    /// Rolling batches: at most this many online minions run it at once.
    pub batch: Option<Batch>,
    /// Answer with the job id only (`--async`).
    pub detach: bool,
}

/// The size of a rolling batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Batch {
    Count(u32),
    /// A percentage (1–100) of the targeted minions, at least one.
    Percent(u8),
}

impl Batch {
    /// Parses `N` or `N%`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("--batch takes N or N% (e.g. 2 or 25%), not '{text}'");
        match text.strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(p @ 1..=100) => Ok(Batch::Percent(p)),
                _ => Err(bad()),
            },
            None => match text.parse::<u32>() {
                Ok(n @ 1..) => Ok(Batch::Count(n)),
                _ => Err(bad()),
            },
        }
    }

    /// How many of `targets` minions run at once.
    pub fn size(self, targets: usize) -> usize {
        match self {
            Batch::Count(n) => n as usize,
            Batch::Percent(p) => (targets * p as usize).div_ceil(100),
        }
        .max(1)
    }
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
    /// A job was published.
    Started(JobStarted),
    /// One minion's verified return, as it arrives.
    Return(Reply),
    /// The end of the wait: who returned, who did not.
    Summary(JobSummary),
    Minions(Vec<MinionInfo>),
    Job(JobView),
    Jobs(Vec<JobListing>),
    Schedules(Vec<ScheduleInfo>),
}

/// Where one expected minion stands in a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MinionState {
    /// Returned, exit status 0.
    Succeeded,
    /// Returned non-zero, killed, or could not start the command.
    Failed,
    /// Would not run it (expired, not for it, replayed).
    Refused,
    /// Stopped while running it; it will not run again.
    Interrupted,
    /// Connected when the job was published; no return yet.
    Running,
    /// Connected when the job was published, and no return within its exec timeout.
    TimedOut,
    /// Offline when the job was published; the command waits in its queue.
    Queued,
    /// Offline, and the command's TTL passed without a return.
    Expired,
}

impl MinionState {
    pub const ALL: [MinionState; 8] = [
        MinionState::Succeeded,
        MinionState::Failed,
        MinionState::Refused,
        MinionState::Interrupted,
        MinionState::Running,
        MinionState::TimedOut,
        MinionState::Queued,
        MinionState::Expired,
    ];

    /// The name used in output and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            MinionState::Succeeded => "succeeded",
            MinionState::Failed => "failed",
            MinionState::Refused => "refused",
            MinionState::Interrupted => "interrupted",
            MinionState::Running => "running",
            MinionState::TimedOut => "timed_out",
            MinionState::Queued => "queued",
            MinionState::Expired => "expired",
        }
    }

    /// Parses a name as [`as_str`](Self::as_str) writes it.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text.replace('-', "_"))
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown state '{text}'; one of: {}", names.join(", "))
            })
    }

    /// No further change is expected.
    pub fn is_final(self) -> bool {
        !matches!(self, MinionState::Running | MinionState::Queued)
    }
}

/// A job as `dispatch job` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub job_id: Uuid,
    pub submitted_by: String,
    pub submitted_at_ms: u64,
    /// `cli`, or the name of the schedule that fired it.
    pub origin: String,
    /// The target as typed.
    pub target: String,
    pub exec: Exec,
    pub wait_ms: u64,
    pub ttl_ms: u64,
    pub expires_at_ms: u64,
    /// Every expected minion, by id.
    pub minions: Vec<MinionReturn>,
}

impl JobView {
    /// Every expected minion is in a final state.
    pub fn complete(&self) -> bool {
        self.minions.iter().all(|m| m.state.is_final())
    }
}

/// One expected minion of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinionReturn {
    pub minion: String,
    pub state: MinionState,
    pub arrived_at_ms: Option<u64>,
    /// The return itself, when one arrived.
    pub outcome: Option<Outcome>,
}

/// A job as `dispatch jobs` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobListing {
    pub job_id: Uuid,
    pub submitted_by: String,
    pub submitted_at_ms: u64,
    pub origin: String,
    pub target: String,
    /// The command's argv (one shell line when it runs through `/bin/sh -c`).
    pub command: Vec<String>,
    /// How many expected minions are in each state (states with none left out).
    pub counts: Vec<(MinionState, u32)>,
}

/// The first answer to [`RequestBody::Run`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStarted {
    pub job_id: Uuid,
    /// Every minion the target resolved to.
    pub expected: Vec<String>,
    /// Those not connected now: the command waits in their queue until the TTL.
    pub offline: Vec<String>,
}

/// The last answer to [`RequestBody::Run`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub job_id: Uuid,
    /// Online minions that did not answer before the wait ended.
    pub timed_out: Vec<String>,
    /// Offline minions; their command stays queued until the TTL.
    pub offline: Vec<String>,
    /// Minions of a rolling batch the command was not yet published to.
    pub not_started: Vec<String>,
}

/// One accepted minion, as `dispatch minions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinionInfo {
    pub id: String,
    pub groups: Vec<String>,
    /// Consuming its queue now.
    pub up: bool,
    /// When it last announced itself (up, heartbeat or down).
    pub last_seen_ms: Option<u64>,
    pub version: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::Batch;

    #[test]
    fn batches_parse_counts_and_percentages() {
        assert_eq!(Batch::parse("2"), Ok(Batch::Count(2)));
        assert_eq!(Batch::parse("25%"), Ok(Batch::Percent(25)));
        for bad in ["0", "0%", "101%", "x", "-1", ""] {
            assert!(Batch::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Batch::Percent(25).size(10), 3);
        assert_eq!(Batch::Percent(1).size(3), 1);
        assert_eq!(Batch::Count(5).size(2), 5);
    }
}
