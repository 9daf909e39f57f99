//! The master's request/response API, served on
//! [`MASTER_RPC_QUEUE`](dispatch_common::names::MASTER_RPC_QUEUE).
//!
//! Every request is checked before it is read: its envelope must be signed by an
//! accepted operator key under the RPC domain, it must not have expired (nor claim a
//! lifetime longer than a request can have), and its nonce must be new: nonces are
//! remembered in the job store until their request expires, so a captured request
//! cannot be replayed, not even after a master restart.
//! The answer is signed by the master and goes to the caller's `reply_to` queue with
//! its `correlation_id`.

use crate::authority::SharedRegistry;
use crate::jobs::Jobs;
use crate::layout::MASTER_ID;
use crate::registry::KeyRecord;
use crate::scheduler::{ScheduleRequest, Scheduler};
use crate::topology;
use dispatch_common::envelope::{Envelope, domain};
use dispatch_common::keys::KeyPair;
use dispatch_common::message::now_ms;
use dispatch_common::rpc::{REQUEST_LIFETIME, Request, RequestBody, Response, ResponseBody, Role};
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, message::Delivery};
use std::sync::Arc;
use std::time::Duration;

/// Clock difference tolerated between an operator's host and the master.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Checks a request envelope: an accepted operator's signature, the expiry window, and
/// a new nonce — `remember` records the nonce until the request expires and says whether
/// it was new (the job store keeps them, so a master restart forgets none). Returns the
/// operator's id and the request.
pub fn verify_request(
    bytes: &[u8],
    registry: &SharedRegistry,
    remember: impl FnOnce([u8; 16], u64) -> Result<bool, String>,
    now: u64,
) -> Result<(String, Request), String> {
    let envelope = Envelope::decode(bytes).map_err(|e| e.to_string())?;
    let key = {
        let registry = registry.lock();
        let operator = registry
            .accepted(&envelope.signer)
            .filter(|record| record.role == Role::Operator)
            .ok_or_else(|| {
                format!(
                    "request refused: '{}' is not an accepted operator; on the master, run \
                     `dispatch key accept {}` after comparing fingerprints",
                    envelope.signer, envelope.signer
                )
            })?;
        operator
            .public_key()
            .ok_or("request refused: the operator's key on record is unreadable")?
    };
    let request: Request = envelope
        .open(domain::RPC, &key)
        .map_err(|e| format!("request refused: {e}"))?;
    let latest = now + (REQUEST_LIFETIME + CLOCK_SKEW).as_millis() as u64;
    if request.expires_at_ms < now {
        return Err("request refused: it has expired (check the clocks of both hosts)".into());
    }
    if request.expires_at_ms > latest {
        return Err("request refused: it claims to expire too far in the future".into());
    }
    if !remember(request.nonce, request.expires_at_ms)? {
        return Err("request refused: it was already used (replayed request)".into());
    }
    Ok((envelope.signer, request))
}

/// Where the answers to one request go: the caller's reply queue, its correlation id,
/// and the request's nonce (echoed in every answer).
#[derive(Debug, Clone)]
pub struct Caller {
    pub reply_to: String,
    pub correlation_id: Option<ShortString>,
    pub nonce: [u8; 16],
}

/// Signs answers as the master and publishes them to callers.
pub struct Responder {
    pub master: KeyPair,
    pub channel: Channel,
}

impl Responder {
    /// Sends `body` to `caller`. A caller that has gone away (its exclusive queue with
    /// it) simply misses the answer.
    pub async fn send(&self, caller: &Caller, body: ResponseBody) {
        let response = Response {
            nonce: caller.nonce,
            body,
        };
        let bytes = Envelope::seal(domain::RPC_RESPONSE, &self.master, MASTER_ID, &response);
        let mut properties = BasicProperties::default();
        if let Some(id) = &caller.correlation_id {
            properties = properties.with_correlation_id(id.clone());
        }
        let published = self
            .channel
            .basic_publish(
                "".into(),
                caller.reply_to.as_str().into(),
                BasicPublishOptions::default(),
                &bytes,
                properties,
            )
            .await;
        if let Err(e) = published {
            tracing::warn!("answering {}: {e}", caller.reply_to);
        }
    }
}

/// Serves RPC requests: verification, then the handler, then the signed answer.
pub struct RpcServer {
    pub registry: SharedRegistry,
    /// Acks requests and declares queues.
    pub channel: Channel,
    pub jobs: Arc<Jobs>,
    pub scheduler: Arc<Scheduler>,
    /// The embedded broker, to close the connections of revoked keys.
    pub broker: Option<Arc<dispatch_broker::Broker>>,
}

impl RpcServer {
    /// Handles one delivery from the RPC queue and acks it.
    pub async fn handle(&self, delivery: Delivery) -> lapin::Result<()> {
        let reply_to = delivery.properties.reply_to().clone();
        let correlation_id = delivery.properties.correlation_id().clone();
        let store = &self.jobs.store;
        let remember = |nonce, expires_at_ms| {
            store.remember_nonce(nonce, expires_at_ms).map_err(|e| {
                tracing::error!("{e}");
                "the master cannot record the request; see its log".to_owned()
            })
        };
        let verified = verify_request(&delivery.data, &self.registry, remember, now_ms());
        let caller = reply_to.map(|reply_to| Caller {
            reply_to: reply_to.to_string(),
            correlation_id,
            nonce: verified.as_ref().map_or([0; 16], |(_, r)| r.nonce),
        });
        match (verified, caller) {
            (Ok((operator, request)), Some(caller)) => {
                tracing::info!(%operator, request = ?request.body, "rpc");
                match request.body {
                    RequestBody::Run(spec) => {
                        let jobs = self.jobs.clone();
                        self.jobs
                            .history
                            .tasks
                            .spawn_step(async move { jobs.submit(&operator, spec, caller).await });
                    }
                    RequestBody::AddSchedule(_)
                    | RequestBody::Schedules { .. }
                    | RequestBody::RemoveSchedule { .. }
                    | RequestBody::PauseSchedule { .. }
                    | RequestBody::ResumeSchedule { .. }
                    | RequestBody::RunSchedule { .. } => {
                        let request = schedule_request(request.body);
                        let scheduler = self.scheduler.clone();
                        self.jobs
                            .history
                            .tasks
                            .spawn_step(async move { scheduler.answer(request, &caller).await });
                    }
                    RequestBody::Jobs(query) => {
                        let (history, responder) =
                            (self.jobs.history.clone(), self.jobs.responder.clone());
                        self.jobs.history.tasks.spawn(async move {
                            let answer = history.list(query).await;
                            responder.send(&caller, answer).await;
                        });
                    }
                    RequestBody::Minions => {
                        let jobs = self.jobs.clone();
                        self.jobs.history.tasks.spawn(async move {
                            let answer = ResponseBody::Minions(jobs.minions().await);
                            jobs.responder.send(&caller, answer).await;
                        });
                    }
                    RequestBody::Job { id, wait_ms } => {
                        let history = self.jobs.history.clone();
                        let wait = wait_ms.map(Duration::from_millis);
                        self.jobs
                            .history
                            .tasks
                            .spawn(async move { history.answer_job(id, wait, caller).await });
                    }
                    body => {
                        let answer = self.answer(body).await;
                        self.jobs.responder.send(&caller, answer).await;
                    }
                }
            }
            (Ok(_), None) => tracing::warn!("an RPC request without reply_to was dropped"),
            (Err(reason), caller) => {
                tracing::warn!("{reason}");
                if let Some(caller) = caller {
                    self.jobs
                        .responder
                        .send(&caller, ResponseBody::Error(reason))
                        .await;
                }
            }
        }
        self.channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await
    }

    async fn answer(&self, body: RequestBody) -> ResponseBody {
        match body {
            RequestBody::ListKeys => ResponseBody::Keys(self.registry.lock().list()),
            RequestBody::AcceptKeys { ids, all } => {
                let accepted = self.registry.lock().accept(&ids, all);
                match accepted {
                    Ok(records) if records.is_empty() => {
                        ResponseBody::Done(vec!["no pending minion keys".into()])
                    }
                    Ok(records) => self.declare_accepted(records).await,
                    Err(e) => ResponseBody::Error(e.to_string()),
                }
            }
            RequestBody::RejectKey { id } => {
                let rejected = self.registry.lock().reject(&id);
                match rejected {
                    Ok(record) => {
                        self.forget(&id).await;
                        ResponseBody::Done(vec![format!(
                            "rejected {} ({})",
                            id, record.fingerprint
                        )])
                    }
                    Err(e) => ResponseBody::Error(e.to_string()),
                }
            }
            RequestBody::DeleteKey { id } => {
                let deleted = self.registry.lock().delete(&id);
                match deleted {
                    Ok(_) => {
                        self.forget(&id).await;
                        ResponseBody::Done(vec![format!("deleted every key of {id}")])
                    }
                    Err(e) => ResponseBody::Error(e.to_string()),
                }
            }
            _ => unreachable!("runs, job lookups and schedules are answered by their own tasks"),
        }
    }

    /// Declares the queues of newly accepted minions (operators have none), each on a
    /// fresh channel so one failure cannot close the RPC channel or skip the others.
    async fn declare_accepted(&self, records: Vec<KeyRecord>) -> ResponseBody {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for record in records {
            let line = format!(
                "accepted {} {} ({})",
                role_name(record.role),
                record.id,
                record.fingerprint
            );
            if record.role == Role::Minion {
                let declared = match self.jobs.connection.create_channel().await {
                    Ok(channel) => topology::declare_minion(&channel, &record).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = declared {
                    tracing::error!(id = %record.id, "declaring the queue of an accepted minion: {e}");
                    failed.push(format!("{line}, but its queue could not be declared: {e}"));
                    continue;
                }
            }
            done.push(line);
        }
        if failed.is_empty() {
            ResponseBody::Done(done)
        } else {
            failed.extend(done);
            ResponseBody::Error(failed.join("\n"))
        }
    }

    /// Deletes the queue of a rejected or deleted minion and closes its connections.
    async fn forget(&self, id: &str) {
        if let Some(broker) = &self.broker {
            broker.close_connections_of(id, "the key was rejected or deleted");
        }
        let deleted = match self.jobs.connection.create_channel().await {
            Ok(channel) => topology::delete_minion(&channel, id).await,
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            tracing::warn!(%id, "could not delete the minion's queue: {e}");
        }
    }
}

/// The scheduler's form of a schedule request.
fn schedule_request(body: RequestBody) -> ScheduleRequest {
    match body {
        RequestBody::AddSchedule(spec) => ScheduleRequest::Add(Box::new(spec)),
        RequestBody::Schedules { name } => ScheduleRequest::List(name),
        RequestBody::RemoveSchedule { name } => ScheduleRequest::Remove(name),
        RequestBody::PauseSchedule { name } => ScheduleRequest::Pause(name),
        RequestBody::ResumeSchedule { name } => ScheduleRequest::Resume(name),
        RequestBody::RunSchedule { name } => ScheduleRequest::RunNow(name),
        other => unreachable!("not a schedule request: {other:?}"),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Minion => "minion",
        Role::Operator => "operator",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AutoAccept, Registry};
    use std::sync::Mutex;

    fn registry_with(operator: &KeyPair) -> (tempfile::TempDir, SharedRegistry) {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::open(dir.path(), AutoAccept::Off).unwrap();
        registry
            .ensure_accepted("operator.local", Role::Operator, &operator.public())
            .unwrap();
        (dir, SharedRegistry::new(registry))
    }

    fn sealed(pair: &KeyPair, signer: &str, request: &Request) -> Vec<u8> {
        Envelope::seal(domain::RPC, pair, signer, request)
    }

    #[test]
    fn an_operator_request_passes_once() {
        let operator = KeyPair::generate();
        let (_dir, registry) = registry_with(&operator);
        let seen = Mutex::new(std::collections::HashSet::new());
        let remember = |nonce, _| Ok(seen.lock().unwrap().insert(nonce));
        let bytes = sealed(
            &operator,
            "operator.local",
            &Request::new(RequestBody::ListKeys),
        );
        let (who, _) = verify_request(&bytes, &registry, remember, now_ms()).unwrap();
        assert_eq!(who, "operator.local");
        let replay = verify_request(&bytes, &registry, remember, now_ms()).unwrap_err();
        assert!(replay.contains("replayed"), "{replay}");
    }

    #[test]
    fn strangers_forgeries_and_stale_requests_are_refused() {
        let operator = KeyPair::generate();
        let (_dir, registry) = registry_with(&operator);
        let seen = Mutex::new(std::collections::HashSet::new());
        let remember = |nonce, _| Ok(seen.lock().unwrap().insert(nonce));
        let request = Request::new(RequestBody::ListKeys);
        let stranger = sealed(&KeyPair::generate(), "operator.eve", &request);
        let err = verify_request(&stranger, &registry, remember, now_ms()).unwrap_err();
        assert!(err.contains("dispatch key accept operator.eve"), "{err}");
        let forged = sealed(&KeyPair::generate(), "operator.local", &request);
        assert!(verify_request(&forged, &registry, remember, now_ms()).is_err());
        let late = now_ms() + 2 * REQUEST_LIFETIME.as_millis() as u64;
        let bytes = sealed(&operator, "operator.local", &request);
        let err = verify_request(&bytes, &registry, remember, late).unwrap_err();
        assert!(err.contains("expired"), "{err}");
        let far = Request {
            expires_at_ms: now_ms() + 3_600_000,
            ..Request::new(RequestBody::ListKeys)
        };
        let err = verify_request(
            &sealed(&operator, "operator.local", &far),
            &registry,
            remember,
            now_ms(),
        );
        assert!(err.unwrap_err().contains("too far"));
    }
}
