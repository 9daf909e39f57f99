//! Jobs in flight: resolving a target, publishing the signed command, streaming each
//! return to the waiting caller, and the summary when the wait ends.
//!
//! A run is resolved against the accepted minions; the broker says which of them are
//! connected (consuming their queue) at that moment. The command is published once —
//! through the group or `all` binding when it reaches exactly the target, otherwise with
//! a `BCC` list of minion binding keys (in chunks, so a header never outgrows a frame) —
//! as a persistent message whose AMQP expiration is the TTL, with publisher confirms.
//! With `--batch`, offline minions are queued at once and online ones get the command a
//! batch at a time: each return releases the next.
//!
//! Every return is recorded in the [`JobStore`] first (the first return of a minion to
//! a job wins), then forwarded to the caller while it waits. The wait ends when every
//! online target has returned or the caller's timeout passes; the caller then gets the
//! summary, and the job goes on without it: late returns are still recorded.

use crate::authority::SharedRegistry;
use crate::connected::Connected;
use crate::history::{History, MAX_WAIT};
use crate::layout::MASTER_ID;
use crate::presence::PresenceBook;
use crate::rpc::{Caller, Responder};
use crate::store::{JobRecord, JobStore};
use dispatch_common::client::PERSISTENT;
use dispatch_common::envelope::{Envelope, domain};
use dispatch_common::keys::KeyPair;
use dispatch_common::message::{Command, Reply, now_ms};
use dispatch_common::names::{
    ALL_BINDING, COMMANDS_EXCHANGE, EVENTS_EXCHANGE, RESULTS_QUEUE, group_binding,
    job_new_event_key, minion_binding,
};
use dispatch_common::rpc::{JobStarted, JobSummary, MinionInfo, ResponseBody, Role, RunSpec};
use dispatch_common::target::Target;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// Binding keys per `BCC` header: about 25 KB, well inside the smallest frame a client
/// may negotiate.
const BCC_CHUNK: usize = 1000;
/// Longest time a command may wait for an offline minion.
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most arguments and environment entries a command may carry, together.
const MAX_ARGS: usize = 4096;

/// A job whose caller still waits, or whose rolling batch still rolls.
#[derive(Debug)]
struct Active {
    caller: Option<Caller>,
    /// Online targets whose return the caller still waits for.
    waiting: BTreeSet<String>,
    /// Offline targets that have not returned.
    offline: BTreeSet<String>,
    /// Rolling batch: online targets not yet sent the command.
    queue: VecDeque<String>,
    /// Rolling batch: sent the command, not yet returned.
    in_flight: BTreeSet<String>,
    /// The signed command; a rolling batch signs a fresh copy (new issue time and
    /// expiry) for each later publish, so a long batch never sends an expired one.
    command: Command,
    ttl: Duration,
}

impl Active {
    fn rolling(&self) -> bool {
        !self.queue.is_empty() || !self.in_flight.is_empty()
    }
}

/// Everything the master needs to run jobs.
pub struct Jobs {
    pub master: KeyPair,
    pub registry: SharedRegistry,
    pub store: Arc<JobStore>,
    pub presence: Arc<PresenceBook>,
    pub responder: Arc<Responder>,
    pub history: Arc<History>,
    /// Publishes commands, in confirm mode.
    pub publisher: Channel,
    /// Asks the broker who is connected.
    pub connected: Connected,
    pub connection: Arc<Connection>,
    active: Mutex<HashMap<Uuid, Active>>,
}

/// Why a run could not start; sent to the caller as an error.
pub type Refusal = String;

/// The `origin` of jobs started with `dispatch run`.
pub const ORIGIN_CLI: &str = "cli";

/// Who started a job, and from where.
#[derive(Debug, Clone)]
pub struct Submitter {
    /// The operator's id, or `schedule`.
    pub by: String,
    /// [`ORIGIN_CLI`] or the schedule's name.
    pub origin: String,
    /// The nonce of the request that asked for it, when one did.
    pub request_nonce: Option<[u8; 16]>,
}

impl Jobs {
    pub fn new(
        master: KeyPair,
        registry: SharedRegistry,
        presence: Arc<PresenceBook>,
        history: Arc<History>,
        publisher: Channel,
        connected: Connected,
        connection: Arc<Connection>,
    ) -> Arc<Self> {
        Arc::new(Self {
            master,
            registry,
            store: history.store.clone(),
            presence,
            responder: history.responder.clone(),
            history,
            publisher,
            connected,
            connection,
            active: Mutex::default(),
        })
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a run for `operator`; every answer goes to `caller`.
    pub async fn submit(self: &Arc<Self>, operator: &str, spec: RunSpec, caller: Caller) {
        let submitter = Submitter {
            by: operator.to_owned(),
            origin: ORIGIN_CLI.to_owned(),
            request_nonce: Some(caller.nonce),
        };
        if let Err(refusal) = self.start(submitter, spec, Some(&caller)).await {
            self.responder
                .send(&caller, ResponseBody::Error(refusal))
                .await;
        }
    }

    /// Starts a run that nobody waits for (a schedule's firing).
    pub async fn launch(
        self: &Arc<Self>,
        submitter: Submitter,
        spec: RunSpec,
    ) -> Result<JobStarted, Refusal> {
        self.start(submitter, spec, None).await
    }

    async fn start(
        self: &Arc<Self>,
        submitter: Submitter,
        spec: RunSpec,
        caller: Option<&Caller>,
    ) -> Result<JobStarted, Refusal> {
        check(&spec)?;
        let expected = self.resolve(&spec.target);
        if expected.is_empty() {
            return Err(format!(
                "target '{}' matches no accepted minion; `dispatch key list` shows them",
                spec.target
            ));
        }
        let connected = self.connected.among(&expected).await;
        let (online, offline): (Vec<String>, BTreeSet<String>) = (
            expected
                .iter()
                .filter(|m| connected.contains(*m))
                .cloned()
                .collect(),
            expected
                .iter()
                .filter(|m| !connected.contains(*m))
                .cloned()
                .collect(),
        );
        let now = now_ms();
        let ttl = Duration::from_millis(spec.ttl_ms);
        let command = Command {
            job_id: Uuid::now_v7(),
            target: spec.target.clone(),
            issued_at_ms: now,
            expires_at_ms: now + spec.ttl_ms,
            exec: spec.exec.clone(),
            recipients: Vec::new(),
        };
        let job_id = command.job_id;
        let record = JobRecord {
            id: job_id,
            submitted_by: submitter.by.clone(),
            submitted_at_ms: now,
            origin: submitter.origin.clone(),
            target: spec.target.clone(),
            expected: expected.clone(),
            offline: offline.iter().cloned().collect(),
            exec: spec.exec.clone(),
            wait_ms: spec.wait_ms,
            ttl_ms: spec.ttl_ms,
            expires_at_ms: command.expires_at_ms,
            request_nonce: submitter.request_nonce,
        };
        let store = self.store.clone();
        let recorded = tokio::task::spawn_blocking(move || store.insert_job(&record))
            .await
            .map_err(|e| format!("recording the job failed: {e}"))?
            .map_err(|e| {
                tracing::error!("{e}");
                "the master cannot record the job; see its log".to_owned()
            })?;
        if !recorded {
            return Err("this request was already carried out (it was delivered twice)".into());
        }
        let (now_targets, queue): (Vec<String>, VecDeque<String>) = match spec.batch {
            None => (expected.clone(), VecDeque::new()),
            Some(batch) => {
                let size = batch.size(online.len());
                let mut queue: VecDeque<String> = online.iter().cloned().collect();
                let first: Vec<String> = queue.drain(..size.min(queue.len())).collect();
                (offline.iter().cloned().chain(first).collect(), queue)
            }
        };
        let bytes = self.seal(&Command {
            recipients: now_targets.clone(),
            ..command.clone()
        });
        let started = JobStarted {
            job_id,
            expected: expected.clone(),
            offline: offline.iter().cloned().collect(),
        };
        // Tracked and announced before it is published: a fast return finds its job,
        // and the caller hears `Started` before any return.
        self.announce(&started).await;
        if let Some(caller) = caller {
            self.responder
                .send(caller, ResponseBody::Started(started.clone()))
                .await;
        }
        let in_flight = match spec.batch {
            Some(_) => now_targets
                .iter()
                .filter(|m| !offline.contains(*m))
                .cloned()
                .collect(),
            None => BTreeSet::new(),
        };
        let active = Active {
            caller: caller.filter(|_| !spec.detach).cloned(),
            waiting: online.iter().cloned().collect(),
            offline,
            queue,
            in_flight,
            command,
            ttl,
        };
        let nobody_to_wait_for = active.waiting.is_empty() || active.caller.is_none();
        self.active().insert(job_id, active);
        let whole_target = spec.batch.is_none();
        if let Err(refusal) = self
            .publish(&bytes, ttl, &spec.target, &now_targets, whole_target)
            .await
        {
            self.active().remove(&job_id);
            return Err(refusal);
        }
        tracing::info!(%job_id, by = %submitter.by, origin = %submitter.origin, target = %spec.target, expected = expected.len(), offline = started.offline.len(), "job published");
        if nobody_to_wait_for {
            self.end_wait(job_id).await;
        } else {
            let jobs = self.clone();
            self.history.tasks.spawn(async move {
                tokio::time::sleep(Duration::from_millis(spec.wait_ms)).await;
                jobs.end_wait(job_id).await;
            });
        }
        Ok(started)
    }

    /// Signs `command` for publishing.
    fn seal(&self, command: &Command) -> Vec<u8> {
        Envelope::seal(domain::COMMAND, &self.master, MASTER_ID, command)
    }

    /// Raises the `job.<jid>` event for watchers, signed by the master.
    async fn announce(&self, started: &JobStarted) {
        let bytes = Envelope::seal(domain::EVENT, &self.master, MASTER_ID, started);
        let published = self
            .responder
            .channel
            .basic_publish(
                EVENTS_EXCHANGE.into(),
                job_new_event_key(&started.job_id).into(),
                BasicPublishOptions::default(),
                &bytes,
                BasicProperties::default(),
            )
            .await;
        if let Err(e) = published {
            tracing::warn!(job = %started.job_id, "raising the job event: {e}");
        }
    }

    /// The accepted minions `target` names, sorted.
    fn resolve(&self, target: &Target) -> Vec<String> {
        let mut ids: Vec<String> = self
            .registry
            .lock()
            .accepted_with_role(Role::Minion)
            .into_iter()
            .filter(|m| target.matches(&m.id, &m.groups))
            .map(|m| m.id)
            .collect();
        ids.sort();
        ids
    }

    /// Publishes the command to `targets`: by the target's own binding when it reaches
    /// exactly them (`whole_target`), else by `BCC` lists of their binding keys.
    async fn publish(
        &self,
        bytes: &[u8],
        ttl: Duration,
        target: &Target,
        targets: &[String],
        whole_target: bool,
    ) -> Result<(), Refusal> {
        let properties = || {
            BasicProperties::default()
                .with_delivery_mode(PERSISTENT)
                .with_expiration(ttl.as_millis().to_string().into())
                .with_reply_to(RESULTS_QUEUE.into())
        };
        let by_binding = match target {
            Target::All if whole_target => Some(ALL_BINDING.to_owned()),
            Target::Group(g) if whole_target => Some(group_binding(g)),
            _ => None,
        };
        let publishes: Vec<(String, BasicProperties)> = match by_binding {
            Some(key) => vec![(key, properties())],
            None => targets
                .chunks(BCC_CHUNK)
                .map(|chunk| {
                    let keys: Vec<AMQPValue> = chunk[1..]
                        .iter()
                        .map(|id| AMQPValue::LongString(LongString::from(minion_binding(id))))
                        .collect();
                    let mut headers = FieldTable::default();
                    if !keys.is_empty() {
                        headers.insert("BCC".into(), AMQPValue::FieldArray(FieldArray::from(keys)));
                    }
                    (
                        minion_binding(&chunk[0]),
                        properties().with_headers(headers),
                    )
                })
                .collect(),
        };
        for (key, props) in publishes {
            let confirm = self
                .publisher
                .basic_publish(
                    COMMANDS_EXCHANGE.into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    bytes,
                    props,
                )
                .await
                .map_err(|e| format!("publishing the command failed: {e}"))?;
            let confirmation = confirm
                .await
                .map_err(|e| format!("publishing the command failed: {e}"))?;
            if confirmation.is_nack() {
                // A full minion queue (`reject-publish`) refuses its copy; the others
                // have theirs, so the job goes on and that minion never returns.
                tracing::warn!(
                    "a target minion's queue is full (offline for long?) and refused the \
                     command; `dispatch minions` shows who is down"
                );
            }
        }
        Ok(())
    }

    /// Records a verified return and passes it on to the waiting caller.
    pub async fn on_return(self: &Arc<Self>, reply: Reply) {
        let store = self.store.clone();
        let recorded = {
            let reply = reply.clone();
            tokio::task::spawn_blocking(move || store.insert_return(&reply, now_ms())).await
        };
        match recorded {
            Ok(Ok(true)) => self.history.returned(reply.job_id).await,
            Ok(Ok(false)) => {
                tracing::debug!(job = %reply.job_id, minion = %reply.minion, "not a first return of a known job");
                return;
            }
            Ok(Err(e)) => tracing::error!("recording a return: {e}"),
            Err(e) => tracing::error!("recording a return: {e}"),
        }
        let (caller, next, done) = {
            let mut active = self.active();
            let Some(job) = active.get_mut(&reply.job_id) else {
                return;
            };
            job.waiting.remove(&reply.minion);
            job.offline.remove(&reply.minion);
            let mut next = None;
            if job.in_flight.remove(&reply.minion) {
                next = job.queue.pop_front();
                if let Some(minion) = &next {
                    job.in_flight.insert(minion.clone());
                }
            }
            let next = next.map(|m| {
                let now = now_ms();
                let fresh = Command {
                    issued_at_ms: now,
                    expires_at_ms: now + job.ttl.as_millis() as u64,
                    recipients: vec![m.clone()],
                    ..job.command.clone()
                };
                (m, fresh, job.ttl)
            });
            let done = job.caller.is_some() && job.waiting.is_empty();
            if job.caller.is_none() && !job.rolling() {
                active.remove(&reply.job_id);
            }
            (
                active.get(&reply.job_id).and_then(|j| j.caller.clone()),
                next,
                done,
            )
        };
        if let Some((minion, command, ttl)) = next {
            let target = Target::List(vec![minion.clone()]);
            let bytes = self.seal(&command);
            if let Err(e) = self.publish(&bytes, ttl, &target, &[minion], false).await {
                tracing::error!(job = %reply.job_id, "rolling batch: {e}");
            }
        }
        if let Some(caller) = caller {
            self.responder
                .send(&caller, ResponseBody::Return(reply.clone()))
                .await;
        }
        if done {
            self.end_wait(reply.job_id).await;
        }
    }

    /// Ends the caller's wait: sends the summary. A rolling batch goes on without it
    /// until it ends or its TTL passes.
    async fn end_wait(self: &Arc<Self>, job_id: Uuid) {
        let (caller, summary, ttl) = {
            let mut active = self.active();
            let Some(job) = active.get_mut(&job_id) else {
                return;
            };
            let caller = job.caller.take();
            let summary = JobSummary {
                job_id,
                timed_out: job
                    .waiting
                    .iter()
                    .filter(|m| !job.queue.contains(m))
                    .cloned()
                    .collect(),
                offline: job.offline.iter().cloned().collect(),
                not_started: job.queue.iter().cloned().collect(),
            };
            let ttl = job.rolling().then_some(job.ttl);
            if ttl.is_none() {
                active.remove(&job_id);
            }
            (caller, summary, ttl)
        };
        if let Some(ttl) = ttl {
            let jobs = self.clone();
            self.history.tasks.spawn(async move {
                tokio::time::sleep(ttl).await;
                jobs.active().remove(&job_id);
            });
        }
        if let Some(caller) = caller {
            self.responder
                .send(&caller, ResponseBody::Summary(summary))
                .await;
        }
    }

    /// Every accepted minion, connected or not, with its last announcement.
    pub async fn minions(&self) -> Vec<MinionInfo> {
        let mut records = self.registry.lock().accepted_with_role(Role::Minion);
        records.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        let connected = self.connected.among(&ids).await;
        let mut minions = Vec::with_capacity(records.len());
        for record in records {
            let last = self.presence.last(&record.id);
            minions.push(MinionInfo {
                up: connected.contains(&record.id),
                last_seen_ms: last.as_ref().map(|p| p.at_ms),
                version: last.map(|p| p.version),
                id: record.id,
                groups: record.groups,
            });
        }
        minions
    }
}

/// Bounds on what a run may ask for.
fn check(spec: &RunSpec) -> Result<(), Refusal> {
    if spec.exec.argv.is_empty() || spec.exec.argv[0].is_empty() {
        return Err("no command to run".into());
    }
    if spec.exec.argv.len() + spec.exec.env.len() > MAX_ARGS {
        return Err(format!(
            "more than {MAX_ARGS} arguments and environment entries"
        ));
    }
    if spec.wait_ms > MAX_WAIT.as_millis() as u64 {
        return Err(format!(
            "--timeout is longer than {}",
            humantime::format_duration(MAX_WAIT)
        ));
    }
    if spec.ttl_ms == 0 || spec.ttl_ms > MAX_TTL.as_millis() as u64 {
        return Err(format!(
            "--ttl must be between 1ms and {}",
            humantime::format_duration(MAX_TTL)
        ));
    }
    Ok(())
}
