//! `dispatch events`: a live stream of job and minion events from the events exchange,
//! like Salt's event bus.
//!
//! Flow: [`plan`] checks `--filter` (an AMQP topic pattern over the event keys, default
//! `#`); [`run`] connects as the other verbs do, declares an exclusive server-named
//! queue bound to [`EVENTS_EXCHANGE`] with the filter as binding key, says on stderr
//! that it is watching, and prints each event as it comes until Ctrl-C (exit 0), a
//! closed stdout (`dispatch events | head`: exit 0) or a lost connection (exit 2).
//! [`decode`] (checking one event) and [`render()`] (printing it) are pure.
//!
//! The queue holds at most [`QUEUE_MAX_LENGTH`] events and the CLI takes
//! [`PREFETCH`] at a time, acking each once printed: a watcher that stops reading (a
//! stalled pager) loses the oldest events instead of growing without bound.
//!
//! # Events and what is checked
//!
//! | key | what | check |
//! | --- | --- | --- |
//! | `job.<jid>` | the master published a job | signed by the master's key (the one the client verified) under the event domain |
//! | `job.<jid>.<minion>` | a minion's return was recorded | the minion's own signed reply (the master verified it against the registry before publishing); its signature, signer and contents must match the key |
//! | `minion.<id>.<up\|heartbeat\|down>` | a minion announced itself | signed under the presence domain by the minion the key names (the broker lets a minion publish only under its own id) |
//!
//! `<jid>` is the job id's 32 hex digits; a hyphenated job id in `--filter` is
//! rewritten to that form. Anything else, or an event that fails its check, is not
//! printed (logged at debug; a `job.<jid>` event not signed by the master at warn).
//!
//! # Text output (`--out text`, the default)
//!
//! One line per event, starting with the time it was received (UTC):
//!
//! ```text
//! 2024-05-01T12:00:00Z job 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b published to 3 minions (1 offline)
//! 2024-05-01T12:00:01Z job 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b: web.01 succeeded
//! 2024-05-01T12:00:01Z job 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b: web.02 failed (exit 1)
//! 2024-05-01T12:00:05Z minion web.03 up (version 0.1.0)
//! ```
//!
//! # JSON output (`--out json`)
//!
//! One object per line, flushed at once, with `event` and `at_ms` (when the watcher
//! received it, Unix milliseconds) and:
//! - `"event": "job_new"`: `job_id`, `expected` and `offline` (arrays of minion ids);
//! - `"event": "job_return"`: the object `dispatch run --out json` prints for a return
//!   (`minion`, `job_id`, `status`, `exit_code`, `signal`, `stdout`, … see
//!   [`crate::run_cmd`]);
//! - `"event": "minion"`: `minion`, `kind` (`up`, `heartbeat`, `down`), `version`,
//!   `groups` (array) and `up` (false in a minion's last announcement).

use crate::cli::{EventsArgs, Output, exit};
use crate::client::{MasterClient, Operator};
use crate::render;
use crate::returns::{MinionRecord, Status, failure};
use dispatch_common::envelope::{Envelope, domain};
use dispatch_common::keys::PublicKey;
use dispatch_common::message::{Outcome, Presence, Reply, now_ms};
use dispatch_common::names::{
    EVENTS_EXCHANGE, MAX_NAME_LEN, check_name, job_event_key, job_new_event_key,
};
use dispatch_common::rpc::JobStarted;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer};
use serde::Serialize;
use std::io::Write;
use std::pin::pin;
use std::process::ExitCode;
use uuid::Uuid;

/// Most events the watcher's queue holds; past it the oldest are dropped.
pub const QUEUE_MAX_LENGTH: i64 = 10_000;
/// Events in flight to the CLI at once.
pub const PREFETCH: u16 = 100;

/// A checked `dispatch events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsPlan {
    /// The binding key.
    pub filter: String,
    pub out: Output,
}

/// Why `--filter` makes no binding key (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --filter '{filter}': {reason}; give a topic pattern over event keys ('*' one \
     segment, '#' any depth), e.g. 'job.#', 'minion.#.down' or 'job.*.web.01'"
)]
pub struct FilterError {
    pub filter: String,
    pub reason: &'static str,
}

/// Checks `--filter`.
pub fn plan(args: EventsArgs) -> Result<EventsPlan, FilterError> {
    Ok(EventsPlan {
        filter: check_filter(&args.filter)?,
        out: args.out,
    })
}

/// A topic pattern over event keys: dot-separated segments, each `*`, `#` or a name
/// segment (`[a-z0-9][a-z0-9_-]*`), at most 255 bytes. A hyphenated job id segment is
/// rewritten to the 32 hex digits the keys carry.
pub fn check_filter(text: &str) -> Result<String, FilterError> {
    let refuse = |reason| {
        Err(FilterError {
            filter: text.chars().take(64).collect(),
            reason,
        })
    };
    if text.is_empty() {
        return refuse("it is empty");
    }
    let mut segments = Vec::new();
    for segment in text.split('.') {
        if segment == "*" || segment == "#" {
            segments.push(segment.to_owned());
            continue;
        }
        if segment.contains(['*', '#']) {
            return refuse("'*' and '#' must stand alone as a whole segment");
        }
        if segment.is_empty() {
            return refuse("it has an empty segment");
        }
        if check_name("segment", segment).is_err() {
            return refuse(
                "a segment holds something other than a-z, 0-9, '-' and '_', or starts \
                 with '-' or '_'",
            );
        }
        match Uuid::try_parse(segment) {
            Ok(job_id) if segment.contains('-') => segments.push(job_id.simple().to_string()),
            _ => segments.push(segment.to_owned()),
        }
    }
    let filter = segments.join(".");
    if filter.len() > MAX_NAME_LEN {
        return refuse("it is longer than 255 bytes");
    }
    Ok(filter)
}

/// An event that passed its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `job.<jid>`: the master published a job.
    JobNew(JobStarted),
    /// `job.<jid>.<minion>`: a minion's return was recorded.
    Return(Reply),
    /// `minion.<id>.<kind>`: a minion announced itself.
    Minion {
        kind: PresenceKind,
        presence: Presence,
    },
}

/// Which announcement a minion made: the last word of its event key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceKind {
    Up,
    Heartbeat,
    Down,
}

impl PresenceKind {
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "up" => Some(Self::Up),
            "heartbeat" => Some(Self::Heartbeat),
            "down" => Some(Self::Down),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Heartbeat => "heartbeat",
            Self::Down => "down",
        }
    }
}

/// Why an event is not printed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// A key that is no dispatch event.
    #[error("not a dispatch event: '{0}'")]
    Unknown(String),
    /// A `job.<jid>` event not signed by the master: someone else published it.
    #[error("event '{key}' is not the master's: {reason}")]
    NotFromMaster { key: String, reason: String },
    /// A minion's event that fails its check.
    #[error("event '{key}': {reason}")]
    Invalid { key: String, reason: String },
}

/// Checks one delivery from the events exchange: its routing `key` and body `data`;
/// `master_key` is the key the master's own events must be signed with.
pub fn decode(key: &str, data: &[u8], master_key: &PublicKey) -> Result<Event, Skip> {
    let unknown = || Skip::Unknown(key.chars().take(300).collect());
    let invalid = |reason: String| Skip::Invalid {
        key: key.chars().take(300).collect(),
        reason,
    };
    if let Some(rest) = key.strip_prefix("job.") {
        let (jid, minion) = match rest.split_once('.') {
            Some((jid, minion)) => (jid, Some(minion)),
            None => (rest, None),
        };
        let job_id = Uuid::try_parse(jid).map_err(|_| unknown())?;
        let envelope = || Envelope::decode(data).map_err(|e| invalid(e.to_string()));
        return match minion {
            None if key == job_new_event_key(&job_id) => {
                let started: JobStarted =
                    envelope()?.open(domain::EVENT, master_key).map_err(|e| {
                        Skip::NotFromMaster {
                            key: key.to_owned(),
                            reason: e.to_string(),
                        }
                    })?;
                if started.job_id != job_id {
                    return Err(invalid(format!("it announces job {}", started.job_id)));
                }
                Ok(Event::JobNew(started))
            }
            Some(minion) if key == job_event_key(&job_id, minion) => {
                let reply: Reply = open_as(&envelope()?, domain::REPLY, minion).map_err(invalid)?;
                if reply.minion != minion || reply.job_id != job_id {
                    return Err(invalid(format!(
                        "it holds the return of {} for job {}",
                        reply.minion, reply.job_id
                    )));
                }
                Ok(Event::Return(reply))
            }
            _ => Err(unknown()),
        };
    }
    if let Some(rest) = key.strip_prefix("minion.") {
        let (id, word) = rest.rsplit_once('.').ok_or_else(unknown)?;
        let kind = PresenceKind::parse(word).ok_or_else(unknown)?;
        let envelope = Envelope::decode(data).map_err(|e| invalid(e.to_string()))?;
        let presence: Presence = open_as(&envelope, domain::PRESENCE, id).map_err(invalid)?;
        if presence.minion != id {
            return Err(invalid(format!("it announces '{}'", presence.minion)));
        }
        return Ok(Event::Minion { kind, presence });
    }
    Err(unknown())
}

/// Opens an envelope that `id` must have signed, with the key it carries: the watcher
/// does not know the minions' keys, but the signature must hold and the signer must be
/// the minion the event key names.
fn open_as<T: serde::de::DeserializeOwned>(
    envelope: &Envelope,
    domain: &str,
    id: &str,
) -> Result<T, String> {
    check_name("minion id", id).map_err(|e| e.to_string())?;
    if envelope.signer != id {
        return Err(format!("signed by '{}'", envelope.signer));
    }
    let key = envelope.claimed_key().map_err(|e| e.to_string())?;
    envelope.open(domain, &key).map_err(|e| e.to_string())
}

/// One event as `out` prints it, received at `at_ms`, ending in a newline.
pub fn render(event: &Event, at_ms: u64, out: Output) -> serde_json::Result<String> {
    match out {
        Output::Text => Ok(format!("{} {}\n", render::time(at_ms), text(event))),
        Output::Json => Ok(serde_json::to_string(&json(event, at_ms))? + "\n"),
    }
}

/// The text of an event, without its time.
fn text(event: &Event) -> String {
    match event {
        Event::JobNew(started) => {
            let n = started.expected.len();
            let mut line = format!(
                "job {} published to {n} {}",
                started.job_id,
                if n == 1 { "minion" } else { "minions" }
            );
            if !started.offline.is_empty() {
                line += &format!(" ({} offline)", started.offline.len());
            }
            line
        }
        Event::Return(reply) => {
            let what = match &reply.outcome {
                Outcome::Finished(result) => match failure(result) {
                    None => "succeeded".to_owned(),
                    Some(why) => format!("failed ({why})"),
                },
                Outcome::Refused { reason } => format!("refused ({reason})"),
                Outcome::Interrupted => "interrupted".to_owned(),
            };
            format!("job {}: {} {what}", reply.job_id, reply.minion)
        }
        Event::Minion { kind, presence } => format!(
            "minion {} {} (version {})",
            presence.minion,
            kind.as_str(),
            presence.version
        ),
    }
}

/// A line of `--out json`: the event's name and time, then its own fields.
#[derive(Debug, Serialize)]
struct Line<T> {
    event: &'static str,
    at_ms: u64,
    #[serde(flatten)]
    body: T,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Body<'a> {
    JobNew {
        job_id: Uuid,
        expected: &'a [String],
        offline: &'a [String],
    },
    Return(MinionRecord<Status>),
    Minion {
        minion: &'a str,
        kind: PresenceKind,
        version: &'a str,
        groups: &'a [String],
        up: bool,
    },
}

fn json(event: &Event, at_ms: u64) -> Line<Body<'_>> {
    let (name, body) = match event {
        Event::JobNew(started) => (
            "job_new",
            Body::JobNew {
                job_id: started.job_id,
                expected: &started.expected,
                offline: &started.offline,
            },
        ),
        Event::Return(reply) => ("job_return", Body::Return(MinionRecord::of_reply(reply))),
        Event::Minion { kind, presence } => (
            "minion",
            Body::Minion {
                minion: &presence.minion,
                kind: *kind,
                version: &presence.version,
                groups: &presence.groups,
                up: presence.up,
            },
        ),
    };
    Line {
        event: name,
        at_ms,
        body,
    }
}

/// Watches the events the plan's filter matches on the master at `url`.
pub async fn run(url: &str, operator: Operator, plan: EventsPlan) -> anyhow::Result<ExitCode> {
    let client = MasterClient::connect(url, operator).await?;
    let master_key = client.master_key();
    let code = match subscribe(client.channel(), &plan.filter).await {
        Ok(consumer) => {
            eprintln!(
                "dispatch: watching events matching '{}'; Ctrl-C stops",
                plan.filter
            );
            follow(consumer, &master_key, plan.out).await
        }
        Err(e) => {
            eprintln!("dispatch: cannot watch the events exchange: {e}");
            exit::USAGE
        }
    };
    client.close().await;
    Ok(ExitCode::from(code))
}

/// Declares the watcher's queue, binds it with `filter` and consumes it.
async fn subscribe(channel: &Channel, filter: &str) -> lapin::Result<Consumer> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(QUEUE_MAX_LENGTH),
    );
    let queue = dispatch_common::client::private_queue(channel, arguments).await?;
    let name = queue.to_string();
    channel
        .queue_bind(
            name.as_str().into(),
            EVENTS_EXCHANGE.into(),
            filter.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    channel
        .basic_consume(
            name.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Prints events until Ctrl-C or a closed stdout (0) or a lost connection (2).
async fn follow(mut consumer: Consumer, master_key: &PublicKey, out: Output) -> u8 {
    let mut ctrl_c = pin!(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    loop {
        let next = tokio::select! {
            () = &mut ctrl_c => return exit::OK,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => {
                eprintln!("dispatch: lost the connection to the master: {e}");
                return exit::USAGE;
            }
            None => {
                eprintln!("dispatch: the master closed the event stream");
                return exit::USAGE;
            }
        };
        match decode(delivery.routing_key.as_str(), &delivery.data, master_key) {
            Ok(event) => match render(&event, now_ms(), out) {
                Ok(line) => {
                    let mut stdout = std::io::stdout().lock();
                    let written = stdout
                        .write_all(line.as_bytes())
                        .and_then(|()| stdout.flush());
                    match written {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return exit::OK,
                        Err(e) => {
                            eprintln!("dispatch: writing to stdout: {e}");
                            return exit::USAGE;
                        }
                    }
                }
                Err(e) => tracing::warn!("an event does not encode as JSON: {e}"),
            },
            Err(skip @ Skip::NotFromMaster { .. }) => tracing::warn!("skipped: {skip}"),
            Err(skip) => tracing::debug!("skipped: {skip}"),
        }
        if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
            eprintln!("dispatch: lost the connection to the master: {e}");
            return exit::USAGE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use dispatch_common::keys::KeyPair;
    use dispatch_common::message::ExecResult;

    const JOB: Uuid = Uuid::from_u128(0x0190_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b);
    const AT: u64 = 60_000;

    fn parse(words: &[&str]) -> Result<EventsPlan, String> {
        let cli = Cli::try_parse_from(["dispatch", "events"].iter().chain(words))
            .map_err(|e| e.to_string())?;
        match cli.command {
            Command::Events(args) => plan(args).map_err(|e| e.to_string()),
            other => panic!("not events: {other:?}"),
        }
    }

    fn started(offline: &[&str]) -> JobStarted {
        JobStarted {
            job_id: JOB,
            expected: vec!["web.01".into(), "web.02".into(), "web.03".into()],
            offline: offline.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn reply(minion: &str, code: i32) -> Reply {
        Reply {
            job_id: JOB,
            minion: minion.to_owned(),
            outcome: Outcome::Finished(ExecResult {
                exit_code: Some(code),
                stdout: b"hi\n".to_vec(),
                duration_ms: 3,
                ..Default::default()
            }),
        }
    }

    fn presence(minion: &str, up: bool) -> Presence {
        Presence {
            minion: minion.to_owned(),
            groups: vec!["web".into()],
            version: "0.1.0".into(),
            at_ms: 5,
            up,
        }
    }

    fn new_key() -> String {
        job_new_event_key(&JOB)
    }

    #[test]
    fn the_default_filter_is_everything_in_text() {
        let plan = parse(&[]).unwrap();
        assert_eq!(plan.filter, "#");
        assert_eq!(plan.out, Output::Text);
        let plan = parse(&["--filter", "minion.*.down", "--out", "json"]).unwrap();
        assert_eq!(plan.filter, "minion.*.down");
        assert_eq!(plan.out, Output::Json);
    }

    #[test]
    fn filters_are_topic_patterns_over_event_keys() {
        for ok in [
            "#",
            "job.#",
            "job.*",
            "job.*.web.01",
            "minion.db.#",
            "*.*.up",
        ] {
            assert_eq!(check_filter(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in [
            "",
            "job.",
            "job..x",
            "job*",
            "job #",
            "minion.Web.up",
            "job/x",
            "a.-b",
            "é",
        ] {
            let error = check_filter(bad).unwrap_err().to_string();
            assert!(error.starts_with("invalid --filter"), "{bad}: {error}");
        }
        assert!(check_filter(&"a".repeat(256)).is_err());
        assert!(check_filter(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn a_hyphenated_job_id_in_a_filter_matches_the_keys() {
        assert_eq!(
            check_filter(&format!("job.{JOB}.#")).unwrap(),
            format!("job.{}.#", JOB.simple())
        );
    }

    #[test]
    fn a_new_job_signed_by_the_master_is_shown_with_counts() {
        let master = KeyPair::generate();
        let data = Envelope::seal(domain::EVENT, &master, "master", &started(&["web.03"]));
        let event = decode(&new_key(), &data, &master.public()).unwrap();
        assert_eq!(event, Event::JobNew(started(&["web.03"])));
        assert_eq!(
            render(&event, AT, Output::Text).unwrap(),
            format!("1970-01-01T00:01:00Z job {JOB} published to 3 minions (1 offline)\n")
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&event, AT, Output::Json).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event": "job_new",
                "at_ms": AT,
                "job_id": JOB.to_string(),
                "expected": ["web.01", "web.02", "web.03"],
                "offline": ["web.03"],
            })
        );
    }

    #[test]
    fn a_new_job_not_signed_by_the_master_is_skipped() {
        let master = KeyPair::generate();
        let forger = KeyPair::generate();
        let forged = Envelope::seal(domain::EVENT, &forger, "master", &started(&[]));
        assert!(matches!(
            decode(&new_key(), &forged, &master.public()),
            Err(Skip::NotFromMaster { .. })
        ));
        let wrong_domain = Envelope::seal(domain::RPC_RESPONSE, &master, "master", &started(&[]));
        assert!(decode(&new_key(), &wrong_domain, &master.public()).is_err());
        let other_job = JobStarted {
            job_id: Uuid::from_u128(7),
            ..started(&[])
        };
        let data = Envelope::seal(domain::EVENT, &master, "master", &other_job);
        assert!(matches!(
            decode(&new_key(), &data, &master.public()),
            Err(Skip::Invalid { .. })
        ));
    }

    #[test]
    fn a_return_is_shown_as_run_shows_it() {
        let minion = KeyPair::generate();
        let master = KeyPair::generate().public();
        let data = Envelope::seal(domain::REPLY, &minion, "web.01", &reply("web.01", 2));
        let event = decode(&job_event_key(&JOB, "web.01"), &data, &master).unwrap();
        assert_eq!(
            render(&event, AT, Output::Text).unwrap(),
            format!("1970-01-01T00:01:00Z job {JOB}: web.01 failed (exit 2)\n")
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&event, AT, Output::Json).unwrap()).unwrap();
        let mut expected =
            serde_json::to_value(MinionRecord::of_reply(&reply("web.01", 2))).unwrap();
        expected["event"] = "job_return".into();
        expected["at_ms"] = AT.into();
        assert_eq!(json, expected);
        assert_eq!(json["status"], "failed");
        assert_eq!(json["stdout"], "hi\n");
        let ok = Envelope::seal(domain::REPLY, &minion, "web.01", &reply("web.01", 0));
        let event = decode(&job_event_key(&JOB, "web.01"), &ok, &master).unwrap();
        assert!(
            render(&event, AT, Output::Text)
                .unwrap()
                .ends_with("web.01 succeeded\n")
        );
    }

    #[test]
    fn refusals_and_interruptions_say_so() {
        let refused = Event::Return(Reply {
            outcome: Outcome::Refused {
                reason: "expired".into(),
            },
            ..reply("db.1", 0)
        });
        assert!(text(&refused).ends_with("db.1 refused (expired)"));
        let interrupted = Event::Return(Reply {
            outcome: Outcome::Interrupted,
            ..reply("db.1", 0)
        });
        assert!(text(&interrupted).ends_with("db.1 interrupted"));
    }

    #[test]
    fn a_return_under_another_minions_key_or_signer_is_skipped() {
        let minion = KeyPair::generate();
        let master = KeyPair::generate().public();
        // Signed by web.02 but published under web.01's key.
        let data = Envelope::seal(domain::REPLY, &minion, "web.02", &reply("web.02", 0));
        assert!(decode(&job_event_key(&JOB, "web.01"), &data, &master).is_err());
        // Signer web.01, but the reply claims web.02.
        let data = Envelope::seal(domain::REPLY, &minion, "web.01", &reply("web.02", 0));
        assert!(decode(&job_event_key(&JOB, "web.01"), &data, &master).is_err());
        // A tampered payload fails the signature.
        let mut envelope = Envelope::decode(&Envelope::seal(
            domain::REPLY,
            &minion,
            "web.01",
            &reply("web.01", 0),
        ))
        .unwrap();
        *envelope.payload.last_mut().unwrap() ^= 1;
        let tampered = rmp_serde::to_vec_named(&envelope).unwrap();
        assert!(decode(&job_event_key(&JOB, "web.01"), &tampered, &master).is_err());
        // Another job's return under this job's key.
        let other = Reply {
            job_id: Uuid::from_u128(7),
            ..reply("web.01", 0)
        };
        let data = Envelope::seal(domain::REPLY, &minion, "web.01", &other);
        assert!(decode(&job_event_key(&JOB, "web.01"), &data, &master).is_err());
    }

    #[test]
    fn presence_is_shown_when_signed_by_the_minion_the_key_names() {
        let minion = KeyPair::generate();
        let master = KeyPair::generate().public();
        let data = Envelope::seal(
            domain::PRESENCE,
            &minion,
            "web.01",
            &presence("web.01", true),
        );
        let event = decode("minion.web.01.up", &data, &master).unwrap();
        assert_eq!(
            render(&event, AT, Output::Text).unwrap(),
            "1970-01-01T00:01:00Z minion web.01 up (version 0.1.0)\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&event, AT, Output::Json).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event": "minion",
                "at_ms": AT,
                "minion": "web.01",
                "kind": "up",
                "version": "0.1.0",
                "groups": ["web"],
                "up": true,
            })
        );
        let down = Envelope::seal(
            domain::PRESENCE,
            &minion,
            "web.01",
            &presence("web.01", false),
        );
        let event = decode("minion.web.01.down", &down, &master).unwrap();
        assert!(text(&event).starts_with("minion web.01 down"));
    }

    #[test]
    fn presence_for_another_id_is_skipped() {
        let minion = KeyPair::generate();
        let master = KeyPair::generate().public();
        let data = Envelope::seal(domain::PRESENCE, &minion, "web", &presence("web", true));
        // Minion `web` may publish `minion.web.<word>` only; this key names web.01.
        assert!(decode("minion.web.01.up", &data, &master).is_err());
        let claims = Envelope::seal(
            domain::PRESENCE,
            &minion,
            "web.01",
            &presence("db.01", true),
        );
        assert!(decode("minion.web.01.up", &claims, &master).is_err());
        let wrong_domain =
            Envelope::seal(domain::REPLY, &minion, "web.01", &presence("web.01", true));
        assert!(decode("minion.web.01.up", &wrong_domain, &master).is_err());
    }

    #[test]
    fn other_keys_and_garbage_are_skipped() {
        let master = KeyPair::generate().public();
        for key in [
            "",
            "job",
            "job.nothex",
            "minion.web.01.reboot",
            "minion",
            "other.x",
        ] {
            assert!(
                matches!(decode(key, b"", &master), Err(Skip::Unknown(_))),
                "{key}"
            );
        }
        let hyphenated = format!("job.{JOB}");
        assert!(matches!(
            decode(&hyphenated, b"", &master),
            Err(Skip::Unknown(_))
        ));
        assert!(matches!(
            decode(&new_key(), b"\xc1", &master),
            Err(Skip::Invalid { .. })
        ));
    }
}
