//! Jobs in flight: resolving a target, publishing the signed command, streaming each
//! return to the waiting caller, and the summary when the wait ends.
//!
//! A run is resolved against the accepted minions; the broker says which of them are
//! connected (consuming their queue) at that moment. The command is published once —
//! through the group or `all` binding when it reaches exactly the target, otherwise with
//! a `BCC` list of minion binding keys (in chunks, so a header never outgrows a frame) —
//! as a persistent message whose AMQP expiration is the TTL, with publisher confirms.
//! With `--batch`, offline minions are queued at once and online ones get the command a
//! batch at a time: each return releases the next. Where a batch stands is recorded in
//! the store at each step, so a restarted master goes on with it
//! ([`Jobs::resume_batches`]).
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
use crate::store::{JobRecord, JobStore, RollingBatch};
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
    /// Rolling batch: how many may have the command at once (0 without `--batch`).
    size: usize,
    /// Rolling batch: when it stops releasing minions (its TTL past the caller's wait).
    until_ms: u64,
}

impl Active {
    fn rolling(&self) -> bool {
        !self.queue.is_empty() || !self.in_flight.is_empty()
    }

    /// Where its rolling batch stands, to record; `None` once the batch ended.
    fn snapshot(&self) -> Option<RollingBatch> {
        self.rolling().then(|| RollingBatch {
            job_id: self.command.job_id,
            size: self.size,
            queue: self.queue.iter().cloned().collect(),
            in_flight: self.in_flight.iter().cloned().collect(),
            until_ms: self.until_ms,
        })
    }

    /// Moves queued minions in flight while the batch has room; returns them, each with
    /// a fresh copy of the command issued at `now`.
    fn release(&mut self, now: u64) -> Vec<(String, Command)> {
        let mut released = Vec::new();
        while self.in_flight.len() < self.size {
            let Some(minion) = self.queue.pop_front() else {
                break;
            };
            self.in_flight.insert(minion.clone());
            let fresh = Command {
                issued_at_ms: now,
                expires_at_ms: now + self.ttl.as_millis() as u64,
                recipients: vec![minion.clone()],
                ..self.command.clone()
            };
            released.push((minion, fresh));
        }
        released
    }

    /// Puts `minion`, whose copy could not be published, back at the head of the queue.
    fn unrelease(&mut self, minion: &str) {
        if self.in_flight.remove(minion) {
            self.queue.push_front(minion.to_owned());
        }
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
    /// Held while a rolling batch is recorded, so the store always ends with the latest.
    batch_writes: tokio::sync::Mutex<()>,
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
            batch_writes: tokio::sync::Mutex::default(),
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
        let (in_flight, size) = match spec.batch {
            Some(_) => {
                let first: BTreeSet<String> = now_targets
                    .iter()
                    .filter(|m| !offline.contains(*m))
                    .cloned()
                    .collect();
                let size = first.len();
                (first, size)
            }
            None => (BTreeSet::new(), 0),
        };
        let caller = caller.filter(|_| !spec.detach).cloned();
        let wait_ms = if caller.is_some() { spec.wait_ms } else { 0 };
        let active = Active {
            caller,
            waiting: online.iter().cloned().collect(),
            offline,
            queue,
            in_flight,
            command,
            ttl,
            size,
            until_ms: now + wait_ms + spec.ttl_ms,
        };
        let rolling = active.rolling();
        let nobody_to_wait_for = active.waiting.is_empty() || active.caller.is_none();
        self.active().insert(job_id, active);
        // Recorded before the publish, so no return can be recorded first. A master that
        // stops in between leaves a batch whose first minions never return: it then
        // ends at its time, as a batch never published.
        if rolling {
            self.record_batch(job_id).await;
        }
        let whole_target = spec.batch.is_none();
        if let Err(refusal) = self
            .publish(&bytes, ttl, &spec.target, &now_targets, whole_target)
            .await
        {
            self.active().remove(&job_id);
            if rolling {
                self.record_batch(job_id).await;
            }
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
        let (caller, released, done) = {
            let mut active = self.active();
            let Some(job) = active.get_mut(&reply.job_id) else {
                return;
            };
            job.waiting.remove(&reply.minion);
            job.offline.remove(&reply.minion);
            let released = job
                .in_flight
                .remove(&reply.minion)
                .then(|| (job.release(now_ms()), job.ttl));
            let done = job.caller.is_some() && job.waiting.is_empty();
            if job.caller.is_none() && !job.rolling() {
                active.remove(&reply.job_id);
            }
            (
                active.get(&reply.job_id).and_then(|j| j.caller.clone()),
                released,
                done,
            )
        };
        if let Some((released, ttl)) = released {
            self.send_released(reply.job_id, released, ttl).await;
            self.record_batch(reply.job_id).await;
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
        let (caller, summary, until_ms) = {
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
            let until_ms = job.rolling().then_some(job.until_ms);
            if until_ms.is_none() {
                active.remove(&job_id);
            }
            (caller, summary, until_ms)
        };
        if let Some(until_ms) = until_ms {
            self.stop_batch_at(job_id, until_ms);
        }
        if let Some(caller) = caller {
            self.responder
                .send(&caller, ResponseBody::Summary(summary))
                .await;
        }
    }

    /// Publishes each released minion's copy of the command. A copy that cannot be
    /// published puts its minion back at the head of the queue (released again by the
    /// next return, or by a restarted master).
    async fn send_released(&self, job_id: Uuid, released: Vec<(String, Command)>, ttl: Duration) {
        for (minion, command) in released {
            let target = Target::List(vec![minion.clone()]);
            let bytes = self.seal(&command);
            let published = self
                .publish(&bytes, ttl, &target, std::slice::from_ref(&minion), false)
                .await;
            if let Err(e) = published {
                tracing::error!(job = %job_id, %minion, "rolling batch: {e}; {minion} goes back to the queue");
                if let Some(job) = self.active().get_mut(&job_id) {
                    job.unrelease(&minion);
                }
            }
        }
    }

    /// Records where the rolling batch of `job_id` stands now, or forgets it once it
    /// ended or stopped. Writes are serialised and each reads the latest state, so the
    /// store never ends with an older one. A failure is logged: the batch goes on, but a
    /// master restart would lose it.
    async fn record_batch(&self, job_id: Uuid) {
        let _in_order = self.batch_writes.lock().await;
        let snapshot = self.active().get(&job_id).and_then(Active::snapshot);
        let recorded = self
            .history
            .blocking(move |store| match snapshot {
                Some(batch) => store.put_batch(&batch),
                None => store.delete_batch(&job_id),
            })
            .await;
        if let Err(e) = recorded {
            tracing::error!(job = %job_id, "recording the rolling batch: {e}");
        }
    }

    /// Stops the rolling batch of `job_id` at `until_ms`, when its TTL has passed the
    /// caller's wait: a minion reached later would run a job nobody follows any more.
    fn stop_batch_at(self: &Arc<Self>, job_id: Uuid, until_ms: u64) {
        let jobs = self.clone();
        let delay = Duration::from_millis(until_ms.saturating_sub(now_ms()));
        self.history.tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            jobs.active().remove(&job_id);
            jobs.record_batch(job_id).await;
        });
    }

    /// Goes on with the rolling batches recorded as under way when the master stopped;
    /// call it before returns are consumed. Minions recorded in flight whose return was
    /// recorded before the stop free their place, and the batch is topped up to its size
    /// from its queue; batches past their time, or whose job is gone, are forgotten.
    pub async fn resume_batches(self: &Arc<Self>) {
        let batches = match self.history.blocking(JobStore::batches).await {
            Ok(batches) => batches,
            Err(e) => return tracing::error!("rolling batches cannot be resumed: {e}"),
        };
        for batch in batches {
            let job_id = batch.job_id;
            let loaded = self
                .history
                .blocking(move |store| {
                    let returned: BTreeSet<String> = store
                        .returns(&job_id)?
                        .into_iter()
                        .map(|r| r.minion)
                        .collect();
                    Ok((store.job(&job_id)?, returned))
                })
                .await;
            let now = now_ms();
            let (active, released) = match loaded {
                Ok((Some(job), returned)) if now < batch.until_ms => {
                    resumed(batch, job, &returned, now)
                }
                Ok(_) => {
                    tracing::info!(job = %job_id, "rolling batch past its time or without its job; not resumed");
                    self.record_batch(job_id).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(job = %job_id, "rolling batch cannot be resumed: {e}");
                    self.record_batch(job_id).await;
                    continue;
                }
            };
            tracing::info!(job = %job_id, in_flight = active.in_flight.len(), queued = active.queue.len(), "resuming a rolling batch");
            let (ttl, until_ms) = (active.ttl, active.until_ms);
            self.active().insert(job_id, active);
            self.stop_batch_at(job_id, until_ms);
            self.send_released(job_id, released, ttl).await;
            self.record_batch(job_id).await;
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

/// The rolling batch of `job` as recorded, minus the minions whose return is recorded
/// (`returned`), topped up from its queue to its size; returns it with the minions
/// released and their copies of the command.
fn resumed(
    batch: RollingBatch,
    job: JobRecord,
    returned: &BTreeSet<String>,
    now: u64,
) -> (Active, Vec<(String, Command)>) {
    let in_flight: BTreeSet<String> = batch
        .in_flight
        .into_iter()
        .filter(|m| !returned.contains(m))
        .collect();
    let mut active = Active {
        caller: None,
        waiting: BTreeSet::new(),
        offline: BTreeSet::new(),
        queue: batch
            .queue
            .into_iter()
            .filter(|m| !returned.contains(m))
            .collect(),
        in_flight,
        command: Command {
            job_id: job.id,
            target: job.target,
            issued_at_ms: now,
            expires_at_ms: now + job.ttl_ms,
            exec: job.exec,
            recipients: Vec::new(),
        },
        ttl: Duration::from_millis(job.ttl_ms),
        size: batch.size,
        until_ms: batch.until_ms,
    };
    let released = active.release(now);
    (active, released)
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

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_common::message::Exec;

    fn recorded(queue: &[&str], in_flight: &[&str]) -> (RollingBatch, JobRecord) {
        let ids = |list: &[&str]| list.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        let job = JobRecord {
            id: Uuid::now_v7(),
            submitted_by: "operator.local".into(),
            submitted_at_ms: 1,
            origin: ORIGIN_CLI.into(),
            target: Target::All,
            expected: ids(&["a", "b", "c", "d"]),
            offline: vec![],
            exec: Exec {
                argv: vec!["true".into()],
                shell: false,
                env: vec![],
                cwd: None,
                timeout_ms: None,
            },
            wait_ms: 10,
            ttl_ms: 60_000,
            expires_at_ms: 60_001,
            request_nonce: None,
        };
        let batch = RollingBatch {
            job_id: job.id,
            size: in_flight.len(),
            queue: ids(queue),
            in_flight: ids(in_flight),
            until_ms: 70_000,
        };
        (batch, job)
    }

    #[test]
    fn a_resumed_batch_releases_one_minion_per_return_recorded_while_in_flight() {
        let (batch, job) = recorded(&["c", "d"], &["a", "b"]);
        let returned = BTreeSet::from(["a".to_owned()]);
        let (active, sends) = resumed(batch, job, &returned, 5_000);
        let sent: Vec<_> = sends
            .iter()
            .map(|(m, c)| (m.as_str(), &c.recipients))
            .collect();
        assert_eq!(sent, [("c", &vec!["c".to_owned()])]);
        assert_eq!(sends[0].1.issued_at_ms, 5_000, "a fresh copy");
        assert_eq!(sends[0].1.expires_at_ms, 65_000);
        assert_eq!(
            active.in_flight,
            BTreeSet::from(["b".to_owned(), "c".to_owned()])
        );
        assert_eq!(active.queue, ["d"]);
        assert!(active.rolling());
    }

    #[test]
    fn a_minion_whose_copy_was_not_published_is_released_again_on_resume() {
        let (batch, job) = recorded(&["c"], &["a", "b"]);
        let (mut active, _) = resumed(batch, job.clone(), &BTreeSet::new(), 5_000);
        active.unrelease("b");
        assert_eq!(active.queue, ["b", "c"]);
        let (active, released) = resumed(active.snapshot().unwrap(), job, &BTreeSet::new(), 6_000);
        let released: Vec<_> = released.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(released, ["b"], "topped up to the batch size");
        assert_eq!(active.queue, ["c"]);
    }

    #[test]
    fn a_resumed_batch_with_nothing_returned_sends_nothing_and_one_fully_returned_ends() {
        let (batch, job) = recorded(&["c"], &["a", "b"]);
        let (active, sends) = resumed(batch.clone(), job.clone(), &BTreeSet::new(), 5_000);
        assert!(sends.is_empty());
        assert_eq!(active.snapshot().unwrap().in_flight, ["a", "b"]);

        let everyone = ["a", "b", "c"].map(String::from).into();
        let (active, sends) = resumed(batch, job, &everyone, 5_000);
        assert!(
            sends.is_empty(),
            "a queued minion that returned is not sent again"
        );
        assert!(!active.rolling());
        assert_eq!(active.snapshot(), None);
    }
}
