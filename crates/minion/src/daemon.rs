//! The minion's life: connect, serve a session, reconnect, shut down.
//!
//! [`Minion`] outlives its sessions. It owns the journal, the trusted master key, the
//! running jobs and the replies not yet sent. Data flows like this:
//!
//! 1. A delivery from the session's consumer is checked ([`crate::verify`]). A refused
//!    command is answered `Refused` and acked; one not known to come from the master
//!    (undecodable, or its signature does not verify) is only logged and acked, never
//!    answered: a reply under the job id it claims would be a minion-signed refusal of
//!    a real job, planted by whoever forged it.
//! 2. An accepted command waits for a job slot (at most `--concurrency` run at once,
//!    whatever a broker's prefetch does across reconnects), has its expiry checked
//!    again (it may have waited past it), is written to the journal (fsynced), and only
//!    then spawned as a job task ([`crate::exec`]).
//! 3. A job task sends its reply, with the delivery's acker, over a bounded channel to
//!    whichever session is current; the session publishes it (waiting for the
//!    confirm), marks the job finished in the journal, then acks the delivery. A reply
//!    that cannot be sent waits in the outbox for the next session, which sends it
//!    first; one that failed in [`MAX_REPLY_ATTEMPTS`] sessions is set aside (an error
//!    is logged), so that it cannot keep the minion from consuming. Jobs run on across
//!    reconnects; a command redelivered meanwhile finds the journal and is not run again.
//!
//! On shutdown the consumer is cancelled, running jobs get [`SHUTDOWN_GRACE`] to finish
//! (their replies are sent), the rest are killed and reported `Interrupted`, a `down`
//! presence is published and the connection closed. Results that could not be sent
//! before the stop (disconnected, or held back by the broker) are kept on disk and sent
//! at the next start ([`crate::kept`]).

use crate::config::{
    Config, MAX_REFUSAL_BYTES, MAX_REPLY_ATTEMPTS, PRESENCE_INTERVAL, SHUTDOWN_GRACE,
    STABLE_SESSION,
};
use crate::connector::{self, Backoff, Connected};
use crate::exec::{self, Ending};
use crate::journal::{Journal, JournalError};
use crate::kept::KeptResults;
use crate::pin::{PinError, Trust};
use crate::session::{PresenceKind, Session, SessionError};
use crate::verify::{self, Checker, MasterKey, Refusal, Verified};
use dispatch_common::keys::KeyPair;
use dispatch_common::message::{Command, Outcome, Reply, now_ms};
use futures_lite::StreamExt;
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};
use uuid::Uuid;

/// Why the minion stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum MinionError {
    /// The broker presents another key than the pinned master key.
    #[error("{0}")]
    MasterKeyChanged(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Pin(#[from] PinError),
}

/// A reply on its way to the master.
struct Outgoing {
    reply: Reply,
    /// The delivery to ack once the reply is with the broker.
    acker: Option<Acker>,
    /// Mark the job finished in the journal once the reply is with the broker.
    finish: bool,
    /// Sessions in which publishing it failed.
    failures: u32,
    /// Loaded from [`KeptResults`]: its file is forgotten once the reply is sent.
    kept: bool,
}

/// How a session ended.
enum SessionEnd {
    Shutdown,
    Failed(String),
}

/// The minion daemon.
pub struct Minion {
    config: Arc<Config>,
    pair: KeyPair,
    trust: Trust,
    journal: Arc<Mutex<Journal>>,
    kept: KeptResults,
    jobs: JoinSet<()>,
    slots: Arc<Semaphore>,
    replies_tx: mpsc::Sender<Outgoing>,
    replies_rx: mpsc::Receiver<Outgoing>,
    outbox: VecDeque<Outgoing>,
    kill: watch::Sender<bool>,
}

impl Minion {
    /// Loads the pin and opens (and compacts) the journal. Jobs the journal shows as
    /// started but never finished are queued to be reported: with the result kept when
    /// the minion stopped, or else as interrupted.
    pub fn new(config: Config, pair: KeyPair) -> Result<Self, MinionError> {
        let trust = Trust::load(&config.pin_path(), config.master_fingerprint)?;
        let (journal, unfinished) = Journal::open(
            &config.journal_path(),
            config.skew.as_millis() as u64,
            now_ms(),
        )?;
        let kept = KeptResults::new(config.kept_results_dir());
        kept.prune(&unfinished.iter().copied().collect::<HashSet<_>>());
        let outbox = unfinished
            .into_iter()
            .map(|job_id| {
                let kept_reply = kept.load(job_id, &config.id);
                let from_disk = kept_reply.is_some();
                let reply = match kept_reply {
                    Some(reply) => {
                        info!(job = %job_id, "job {job_id} finished before the minion stopped; sending its kept result");
                        reply
                    }
                    None => {
                        warn!(job = %job_id, "job {job_id} was interrupted when the minion stopped; it will be reported interrupted and not run again");
                        Reply {
                            job_id,
                            minion: config.id.clone(),
                            outcome: Outcome::Interrupted,
                        }
                    }
                };
                Outgoing {
                    reply,
                    acker: None,
                    finish: true,
                    failures: 0,
                    kept: from_disk,
                }
            })
            .collect();
        let concurrency = usize::from(config.concurrency);
        let (replies_tx, replies_rx) = mpsc::channel(concurrency);
        Ok(Self {
            config: Arc::new(config),
            pair,
            trust,
            journal: Arc::new(Mutex::new(journal)),
            kept,
            jobs: JoinSet::new(),
            slots: Arc::new(Semaphore::new(concurrency)),
            replies_tx,
            replies_rx,
            outbox,
            kill: watch::channel(false).0,
        })
    }

    /// Runs until `shutdown` turns true (then returns `Ok`) or the master key changes.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), MinionError> {
        let mut backoff = Backoff::new(self.config.reconnect_max);
        let url = dispatch_common::client::redact(&self.config.master);
        loop {
            let attempt = tokio::select! {
                attempt = connector::connect(&self.config, &self.pair, &self.trust) => attempt,
                () = stopped(&mut shutdown) => break,
            };
            let failure = match attempt {
                Err(e) if e.is_fatal() => {
                    error!("{e}");
                    self.drain(None).await;
                    return Err(MinionError::MasterKeyChanged(e.to_string()));
                }
                Err(e) => e.to_string(),
                Ok(connected) => {
                    let started = Instant::now();
                    match self.serve(connected, &url, &mut shutdown).await? {
                        SessionEnd::Shutdown => return Ok(()),
                        SessionEnd::Failed(reason) => {
                            if started.elapsed() >= STABLE_SESSION {
                                backoff.reset();
                            }
                            reason
                        }
                    }
                }
            };
            let delay = backoff.next_delay();
            warn!(
                "{failure}; retrying in {}",
                humantime::format_duration(std::time::Duration::from_millis(
                    delay.as_millis() as u64
                ))
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopped(&mut shutdown) => break,
            }
        }
        info!("stopping while disconnected from the master");
        self.drain(None).await;
        Ok(())
    }

    /// Pins the master on first use, opens a session and serves it until it fails or
    /// the minion shuts down.
    async fn serve(
        &mut self,
        connected: Connected,
        url: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, MinionError> {
        if self.trust.master_key().is_none() {
            let Some(key) = connected.broker_key else {
                dispatch_common::client::close(&connected.connection, "no master key").await;
                return Ok(SessionEnd::Failed(
                    "the broker presented no key to pin as the master's".into(),
                ));
            };
            self.trust.pin(key)?;
        }
        let mut session = match Session::open(connected.connection, &self.config, &self.pair).await
        {
            Ok(session) => session,
            Err(e) => return Ok(SessionEnd::Failed(e.to_string())),
        };
        info!(
            master = %url,
            queue = session.queue(),
            "connected to {url} as {}; consuming {}",
            self.config.id,
            session.queue()
        );
        match self.consume(&mut session, shutdown).await {
            Ok(()) => {
                info!("stopping: no new commands; waiting for running jobs");
                // Held back, nothing could be written: stop without a word to the broker
                // (results are kept and sent at the next start).
                let writable = !session.is_blocked();
                if writable {
                    session.stop_consuming().await;
                } else {
                    warn!(
                        "the broker holds back this minion's publishes: stopping without telling it"
                    );
                }
                let live = self.drain(writable.then_some(&session)).await;
                if live
                    && let Err(e) = session
                        .publish_presence(&self.pair, &self.config, PresenceKind::Down)
                        .await
                {
                    warn!("cannot announce that the minion is going down: {e}");
                }
                session.close().await;
                Ok(SessionEnd::Shutdown)
            }
            Err(e) => {
                session.close().await;
                Ok(SessionEnd::Failed(format!(
                    "session with the master ended: {e}"
                )))
            }
        }
    }

    /// The session's loop. Returns `Ok` on shutdown, the error when the session fails.
    async fn consume(
        &mut self,
        session: &mut Session,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        let announce = async {
            while !self.outbox.is_empty() {
                self.send_first(session).await?;
            }
            session
                .publish_presence(&self.pair, &self.config, PresenceKind::Up)
                .await
        };
        match unless_held_at_stop(session, shutdown, announce).await {
            Some(announced) => announced?,
            None => return Ok(()),
        }
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + PRESENCE_INTERVAL,
            PRESENCE_INTERVAL,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // An accepted command waiting for a job slot; no delivery is taken meanwhile.
        let mut waiting: Option<(Verified, Acker)> = None;
        loop {
            let slots = self.slots.clone();
            tokio::select! {
                biased;
                () = stopped(shutdown) => return Ok(()),
                Some(out) = self.replies_rx.recv() => {
                    // In the outbox before the publish starts: a stop that abandons the
                    // publish (held back) leaves it there to be kept.
                    self.outbox.push_front(out);
                    match unless_held_at_stop(session, shutdown, self.send_first(session)).await {
                        Some(sent) => sent?,
                        None => return Ok(()),
                    }
                }
                Some(joined) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    if let Err(e) = joined {
                        error!("a job task failed: {e}");
                    }
                }
                permit = slots.acquire_owned(), if waiting.is_some() => {
                    let permit = permit.expect("the job semaphore is never closed");
                    if let Some((verified, acker)) = waiting.take() {
                        self.start(session, verified, acker, permit).await?;
                    }
                }
                delivery = session.consumer().next(), if waiting.is_none() => match delivery {
                    Some(Ok(delivery)) => waiting = self.take(session, delivery).await?,
                    Some(Err(e)) => return Err(SessionError::Lost(e)),
                    None => return Err(SessionError::Cancelled(session.queue().to_owned())),
                },
                _ = heartbeat.tick() => {
                    let beat = session.publish_presence(&self.pair, &self.config, PresenceKind::Heartbeat);
                    match unless_held_at_stop(session, shutdown, beat).await {
                        Some(sent) => sent?,
                        None => return Ok(()),
                    }
                }
            }
        }
    }

    /// Checks a delivery. Returns the command to run, or `None` when it was refused
    /// (and answered) or dropped.
    async fn take(
        &mut self,
        session: &Session,
        delivery: Delivery,
    ) -> Result<Option<(Verified, Acker)>, SessionError> {
        let Some(master) = self.trust.master_key() else {
            // Unreachable: a session starts only once a master key is known.
            error!("no master key to verify commands with; leaving the command queued");
            return Err(SessionError::Cancelled(session.queue().to_owned()));
        };
        let checker = Checker {
            id: &self.config.id,
            groups: &self.config.groups,
            now_ms: now_ms(),
            skew_ms: self.config.skew.as_millis() as u64,
        };
        let verdict = {
            let journal = lock(&self.journal);
            verify::verify(&delivery.data, &master, &checker, |job| {
                journal.contains(job)
            })
        };
        let refusal = match verdict {
            Ok(verified) => {
                if matches!(master, MasterKey::Fingerprint(_))
                    && let Err(e) = self.trust.pin(verified.signer)
                {
                    warn!("cannot pin the master key: {e}");
                }
                return Ok(Some((verified, delivery.acker)));
            }
            Err(refusal) => refusal,
        };
        match refusal.reply_to() {
            Some(job_id) if matches!(refusal, Refusal::Replayed { .. }) && delivery.redelivered => {
                // Our own ack was lost (reconnect, crash): the job was taken, and its
                // reply (result or "interrupted") is sent on its own.
                info!(job = %job_id, "job {job_id} redelivered; already taken by this minion, not run again");
                ack(&delivery.acker).await;
            }
            Some(job_id) => {
                warn!(job = %job_id, "refused command {job_id}: {refusal}");
                let out = Outgoing {
                    reply: Reply {
                        job_id,
                        minion: self.config.id.clone(),
                        outcome: Outcome::Refused {
                            reason: refusal.reason(),
                        },
                    },
                    acker: Some(delivery.acker),
                    finish: false,
                    failures: 0,
                    kept: false,
                };
                self.send(session, out).await?;
            }
            None => {
                // Not known to come from the master: logged, never answered.
                match refusal.job_id() {
                    Some(claimed) => error!(
                        claimed = %claimed,
                        "refused a command claiming job {claimed}, not answered: {refusal}"
                    ),
                    None => error!("refused a delivery, not answered: {refusal}"),
                }
                ack(&delivery.acker).await;
            }
        }
        Ok(None)
    }

    /// Journals the command (fsync), then spawns its job.
    async fn start(
        &mut self,
        session: &Session,
        verified: Verified,
        acker: Acker,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), SessionError> {
        let command = verified.command;
        let job_id = command.job_id;
        let journal = self.journal.clone();
        let expires = command.expires_at_ms;
        let begun =
            tokio::task::spawn_blocking(move || begin(&journal, job_id, expires, now_ms)).await;
        let reason = match begun {
            Ok(Ok(())) => {
                info!(job = %job_id, "job {job_id}: running {:?}{}", command.exec.argv, if command.exec.shell { " (shell)" } else { "" });
                let kill = self.kill.subscribe();
                let tx = self.replies_tx.clone();
                let id = self.config.id.clone();
                let max_output = self.config.max_output;
                self.jobs
                    .spawn(job(command, id, max_output, kill, tx, acker, permit));
                return Ok(());
            }
            Ok(Err(NotBegun::Refused(refusal))) => refusal.reason(),
            Ok(Err(NotBegun::Journal(e))) => {
                error!("cannot write the journal, so job {job_id} is not run: {e}");
                verify::clip(
                    &format!("the minion cannot write its journal: {e}"),
                    MAX_REFUSAL_BYTES,
                )
            }
            Err(e) => verify::clip(
                &format!("the minion cannot write its journal: {e}"),
                MAX_REFUSAL_BYTES,
            ),
        };
        warn!(job = %job_id, "refused command {job_id}: {reason}");
        let out = Outgoing {
            reply: Reply {
                job_id,
                minion: self.config.id.clone(),
                outcome: Outcome::Refused { reason },
            },
            acker: Some(acker),
            finish: false,
            failures: 0,
            kept: false,
        };
        self.send(session, out).await
    }

    /// Sends `out` ahead of the outbox ([`send_first`](Self::send_first)).
    async fn send(&mut self, session: &Session, out: Outgoing) -> Result<(), SessionError> {
        self.outbox.push_front(out);
        self.send_first(session).await
    }

    /// Publishes the reply at the front of the outbox, then marks its job finished and
    /// acks its delivery. The reply leaves the outbox only once the broker confirmed it,
    /// so a stop that abandons a held-back publish still finds it there
    /// ([`keep_unsent`](Self::keep_unsent)). On failure it goes back for the next session
    /// ([`set_back`]).
    async fn send_first(&mut self, session: &Session) -> Result<(), SessionError> {
        let Some(first) = self.outbox.front() else {
            return Ok(());
        };
        let published = session.publish_reply(&self.pair, &first.reply).await;
        let out = self
            .outbox
            .pop_front()
            .expect("the reply being sent stays at the front");
        if let Err(e) = published {
            set_back(&mut self.outbox, out, &e);
            return Err(e);
        }
        let job_id = out.reply.job_id;
        if out.finish {
            let journal = self.journal.clone();
            let kept = out.kept.then(|| self.kept.clone());
            let mark_finished = move || {
                let marked = lock(&journal).finish(job_id);
                if let (Ok(()), Some(kept)) = (&marked, kept) {
                    kept.forget(job_id);
                }
                marked
            };
            let marked = tokio::task::spawn_blocking(mark_finished)
                .await
                .map_err(|e| e.to_string())
                .and_then(|marked| marked.map_err(|e| e.to_string()));
            if let Err(e) = marked {
                warn!("cannot mark job {job_id} finished in the journal: {e}");
            }
        }
        if let Some(acker) = &out.acker {
            ack(acker).await;
        }
        Ok(())
    }

    /// The end of the minion's life: lets running jobs finish for [`SHUTDOWN_GRACE`],
    /// kills the rest (reported interrupted), sends their replies while `session` works,
    /// and keeps the results it could not send ([`keep_unsent`](Self::keep_unsent)).
    /// Returns whether the session still works.
    async fn drain(&mut self, session: Option<&Session>) -> bool {
        let mut live = session;
        if !self.jobs.is_empty() {
            info!(
                "waiting up to {} for {} running job(s)",
                humantime::format_duration(SHUTDOWN_GRACE),
                self.jobs.len()
            );
        }
        let deadline = tokio::time::sleep(SHUTDOWN_GRACE);
        tokio::pin!(deadline);
        let mut killed = false;
        while !self.jobs.is_empty() {
            tokio::select! {
                Some(out) = self.replies_rx.recv() => live = self.deliver(live, out).await,
                Some(joined) = self.jobs.join_next() => {
                    if let Err(e) = joined {
                        error!("a job task failed: {e}");
                    }
                }
                () = &mut deadline, if !killed => {
                    warn!(
                        "killing {} job(s) still running after {}; they are reported interrupted",
                        self.jobs.len(),
                        humantime::format_duration(SHUTDOWN_GRACE)
                    );
                    let _ = self.kill.send(true);
                    killed = true;
                }
            }
        }
        while let Ok(out) = self.replies_rx.try_recv() {
            live = self.deliver(live, out).await;
        }
        self.keep_unsent().await;
        live.is_some()
    }

    /// Keeps the results still in the outbox on disk for the next start
    /// ([`crate::kept`]). Other unsent replies need nothing: an unacked refusal is
    /// redelivered and answered again, and an interrupted job is found in the journal.
    async fn keep_unsent(&mut self) {
        let results: Vec<Reply> = self
            .outbox
            .drain(..)
            .filter(|out| out.finish && matches!(out.reply.outcome, Outcome::Finished(_)))
            .map(|out| out.reply)
            .collect();
        if results.is_empty() {
            return;
        }
        let kept = self.kept.clone();
        let keep = move || {
            results
                .iter()
                .map(|reply| (reply.job_id, kept.keep(reply)))
                .collect::<Vec<_>>()
        };
        let outcomes = match tokio::task::spawn_blocking(keep).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                error!(
                    "cannot keep unsent results: {e}; those jobs are reported interrupted at the next start"
                );
                return;
            }
        };
        for (job_id, outcome) in outcomes {
            match outcome {
                Ok(()) => warn!(
                    job = %job_id,
                    "job {job_id}: its result could not be sent before the stop; kept in {} and sent at the next start",
                    self.kept.dir().display()
                ),
                Err(e) => error!(
                    job = %job_id,
                    "job {job_id}: cannot keep its unsent result in {}: {e}; it is reported interrupted at the next start",
                    self.kept.dir().display()
                ),
            }
        }
    }

    async fn deliver<'s>(
        &mut self,
        session: Option<&'s Session>,
        out: Outgoing,
    ) -> Option<&'s Session> {
        match session {
            Some(session) => match self.send(session, out).await {
                Ok(()) => Some(session),
                Err(e) => {
                    warn!("cannot send replies while stopping: {e}");
                    None
                }
            },
            None => {
                self.outbox.push_back(out);
                None
            }
        }
    }
}

/// Why [`begin`] did not take a job.
#[derive(Debug)]
enum NotBegun {
    Refused(Refusal),
    Journal(JournalError),
}

/// Takes a job in the journal (fsynced) right before it is spawned. The expiry is
/// checked again first, by the clock read once the journal is locked: a command checked
/// at delivery may have waited for a job slot past its signed expiry, and is then
/// refused as expired, neither journalled nor run.
fn begin(
    journal: &Mutex<Journal>,
    job_id: Uuid,
    expires_at_ms: u64,
    now_ms: impl FnOnce() -> u64,
) -> Result<(), NotBegun> {
    let mut journal = lock(journal);
    let now = now_ms();
    verify::check_expiry(job_id, expires_at_ms, now).map_err(NotBegun::Refused)?;
    match journal.begin(job_id, expires_at_ms, now) {
        Ok(true) => Ok(()),
        Ok(false) => Err(NotBegun::Refused(Refusal::Replayed { job_id })),
        Err(e) => Err(NotBegun::Journal(e)),
    }
}

/// One job: run it, then hand its reply to the session. The slot is held until then.
async fn job(
    command: Command,
    minion: String,
    max_output: usize,
    mut kill: watch::Receiver<bool>,
    replies: mpsc::Sender<Outgoing>,
    acker: Acker,
    _slot: OwnedSemaphorePermit,
) {
    let job_id = command.job_id;
    let stop = async move {
        if kill.wait_for(|k| *k).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let (result, ending) = exec::run(&command.exec, max_output, stop).await;
    let outcome = match ending {
        Ending::Stopped => {
            warn!(job = %job_id, "job {job_id}: interrupted (killed at shutdown)");
            Outcome::Interrupted
        }
        Ending::Completed => {
            info!(
                job = %job_id,
                exit_code = ?result.exit_code,
                signal = ?result.signal,
                timed_out = result.timed_out,
                error = ?result.error,
                duration_ms = result.duration_ms,
                "job {job_id}: finished"
            );
            Outcome::Finished(result)
        }
    };
    let out = Outgoing {
        reply: Reply {
            job_id,
            minion,
            outcome,
        },
        acker: Some(acker),
        finish: true,
        failures: 0,
        kept: false,
    };
    if replies.send(out).await.is_err() {
        warn!(job = %job_id, "job {job_id}: the minion is gone; its reply is lost");
    }
}

/// Puts a reply that failed to publish back at the front of the outbox, to be sent
/// first by the next session. A reply that failed in [`MAX_REPLY_ATTEMPTS`] sessions is
/// set aside instead, with an error: were its publish what breaks the sessions, it would
/// otherwise keep the minion from ever consuming again.
fn set_back(outbox: &mut VecDeque<Outgoing>, mut out: Outgoing, error: &SessionError) {
    out.failures += 1;
    if out.failures < MAX_REPLY_ATTEMPTS {
        outbox.push_front(out);
        return;
    }
    let job_id = out.reply.job_id;
    let then = if out.kept {
        "its kept result is sent again at the next start"
    } else if out.finish {
        "the job stays started in the journal and is reported interrupted at the next start"
    } else {
        "the master learns of the job from its expiry"
    };
    error!(
        job = %job_id,
        "giving up on the reply for job {job_id} after {} failed attempts (last: {error}); {then}",
        out.failures
    );
}

async fn ack(acker: &Acker) {
    if let Err(e) = acker.ack(BasicAckOptions::default()).await {
        tracing::debug!(
            "ack failed (the delivery will be redelivered and refused as replayed): {e}"
        );
    }
}

/// Resolves once `shutdown` is true; never if its sender is gone.
/// `work` (a publish), unless the minion is asked to stop while the broker holds back
/// `session`'s publishes (its disk or memory alarm): such a publish completes only once
/// the alarm clears, and must not keep the minion from stopping. `None` then; a publish
/// under way when a stop comes is otherwise finished.
async fn unless_held_at_stop<T>(
    session: &Session,
    shutdown: &mut watch::Receiver<bool>,
    work: impl Future<Output = T>,
) -> Option<T> {
    let mut work = std::pin::pin!(work);
    tokio::select! {
        done = &mut work => return Some(done),
        () = stopped(shutdown) => {}
    }
    if session.is_blocked() {
        None
    } else {
        Some(work.await)
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn lock(journal: &Mutex<Journal>) -> MutexGuard<'_, Journal> {
    journal.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing() -> Outgoing {
        Outgoing {
            reply: Reply {
                job_id: Uuid::now_v7(),
                minion: "web.01".into(),
                outcome: Outcome::Interrupted,
            },
            acker: None,
            finish: true,
            failures: 0,
            kept: false,
        }
    }

    #[test]
    fn a_reply_that_keeps_failing_is_set_aside_and_does_not_block_the_outbox() {
        let mut outbox = VecDeque::new();
        let other = outgoing();
        let other_id = other.reply.job_id;
        outbox.push_back(other);
        let mut failing = outgoing();
        let failing_id = failing.reply.job_id;
        let error = SessionError::Nacked("dispatch.results".into());
        for attempt in 1..MAX_REPLY_ATTEMPTS {
            set_back(&mut outbox, failing, &error);
            assert_eq!(
                outbox.len(),
                2,
                "attempt {attempt}: kept for the next session"
            );
            failing = outbox.pop_front().unwrap();
            assert_eq!(failing.reply.job_id, failing_id, "retried first");
            assert_eq!(failing.failures, attempt);
        }
        set_back(&mut outbox, failing, &error);
        assert_eq!(
            outbox.len(),
            1,
            "set aside after {MAX_REPLY_ATTEMPTS} failures"
        );
        assert_eq!(outbox[0].reply.job_id, other_id);
    }

    #[test]
    fn a_command_that_expired_while_waiting_for_a_slot_is_not_begun() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_700_000_000_000;
        let (journal, _) = Journal::open(&dir.path().join("journal"), 60_000, now).unwrap();
        let journal = Mutex::new(journal);
        let (late, on_time) = (Uuid::now_v7(), Uuid::now_v7());
        // Accepted at delivery (now <= expiry), started one millisecond past it.
        match begin(&journal, late, now, || now + 1) {
            Err(NotBegun::Refused(refusal @ Refusal::Expired { .. })) => {
                assert!(refusal.reason().starts_with("expired"), "{refusal}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!lock(&journal).contains(&late), "not journalled");
        // At the expiry itself it still starts, once.
        begin(&journal, on_time, now, || now).unwrap();
        assert!(lock(&journal).contains(&on_time));
        assert!(matches!(
            begin(&journal, on_time, now, || now),
            Err(NotBegun::Refused(Refusal::Replayed { .. }))
        ));
    }
}
