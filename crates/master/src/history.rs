//! Questions about past and running jobs: `dispatch job` and `dispatch jobs`.
//!
//! A job's view is computed from its record and its returns at the moment it is asked
//! for: each expected minion is succeeded, failed, refused or interrupted by its return;
//! without one, a minion that was connected when the job was published is running until
//! its exec timeout (then timed out), and one that was offline is queued until the
//! command's signed expiry (then expired — the broker dead-letters the copy at the same
//! moment, which only confirms it). Lookups accept the whole id, or an unambiguous
//! prefix or suffix of at least 8 hex digits.
//!
//! `dispatch job --wait` registers the caller as a watcher: it is answered when a return
//! completes the job, when the next state change by time completes it, or when its wait
//! ends. Retention: jobs older than `--keep-jobs` are pruned in small batches in the
//! background, so lookups never wait behind a long delete.

use crate::rpc::{Caller, Responder};
use crate::store::{JobRecord, JobStore, ReturnRecord, StoreError};
use crate::tasks::Tasks;
use dispatch_common::message::{Outcome, now_ms};
use dispatch_common::rpc::{
    JobListing, JobQuery, JobView, MinionReturn, MinionState, ResponseBody,
};
use dispatch_common::target::{Target, topic_matches};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// Shortest id prefix or suffix accepted (the first 8 hex digits change only every
/// ~65 s, so shorter ones would be ambiguous most of the time).
pub const MIN_ID_DIGITS: usize = 8;
/// Jobs named when a short id is ambiguous.
const AMBIGUOUS_SHOWN: usize = 5;
/// Longest wait a caller may ask for: `dispatch run --timeout`, `dispatch job --wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Time a minion has, past its exec timeout, to kill the command and send its return.
const RETURN_GRACE: Duration = Duration::from_secs(15);
/// Jobs read per page when a listing filters by target or state.
const PAGE: usize = 500;
/// Most jobs a listing may ask for.
pub const MAX_LIMIT: u32 = 10_000;
/// Jobs deleted per batch when pruning.
const PRUNE_BATCH: usize = 1000;
/// How often old jobs are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The job history and the callers waiting on it.
pub struct History {
    pub store: Arc<JobStore>,
    pub responder: Arc<Responder>,
    /// Where every background task of the job engine is spawned.
    pub tasks: Tasks,
    watchers: Mutex<HashMap<Uuid, Vec<Caller>>>,
}

impl History {
    pub fn new(store: Arc<JobStore>, responder: Arc<Responder>, tasks: Tasks) -> Arc<Self> {
        Arc::new(Self {
            store,
            responder,
            tasks,
            watchers: Mutex::default(),
        })
    }

    /// Runs a blocking store call off the async threads; a store error is logged, and the
    /// caller gets a text to pass on.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&JobStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, String> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || call(&store)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                tracing::error!("{e}");
                Err("the master's job store failed; see its log".into())
            }
            Err(e) => Err(format!("the job store failed: {e}")),
        }
    }

    /// The job `id` names (whole, prefix or suffix).
    pub async fn resolve(&self, id: &str) -> Result<Uuid, String> {
        let hex: String = id.trim().to_ascii_lowercase().replace('-', "");
        if hex.len() < MIN_ID_DIGITS
            || hex.len() > 32
            || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!(
                "'{id}' is not a job id: give the whole id or at least {MIN_ID_DIGITS} hex \
                 digits of its start or end (`dispatch jobs` lists them)"
            ));
        }
        let found = self
            .blocking(move |store| store.find_ids(&hex, AMBIGUOUS_SHOWN + 1))
            .await?;
        match found.as_slice() {
            [] => Err(format!(
                "no job '{id}' (it may have been pruned); `dispatch jobs` lists them"
            )),
            [one] => Ok(*one),
            many => {
                let shown: Vec<String> = many
                    .iter()
                    .take(AMBIGUOUS_SHOWN)
                    .map(Uuid::to_string)
                    .collect();
                let more = if many.len() > AMBIGUOUS_SHOWN {
                    ", …"
                } else {
                    ""
                };
                Err(format!(
                    "'{id}' matches several jobs: {}{more}; give more digits",
                    shown.join(", ")
                ))
            }
        }
    }

    /// The view of job `id` now.
    pub async fn view(&self, id: Uuid) -> Result<JobView, String> {
        let (record, returns) = self
            .blocking(move |store| Ok((store.job(&id)?, store.returns(&id)?)))
            .await?;
        let record = record.ok_or_else(|| format!("no job {id} (it may have been pruned)"))?;
        Ok(view(&record, &returns, now_ms()))
    }

    /// Answers `dispatch job`: at once, or once the job is complete or `wait` passes.
    pub async fn answer_job(self: &Arc<Self>, id: String, wait: Option<Duration>, caller: Caller) {
        let job = match self.resolve(&id).await {
            Ok(job) => job,
            Err(e) => return self.responder.send(&caller, ResponseBody::Error(e)).await,
        };
        // Watch before looking, so a return landing in between is not missed.
        if wait.is_some() {
            self.watchers().entry(job).or_default().push(caller.clone());
        }
        let view = match self.view(job).await {
            Ok(view) => view,
            Err(e) => {
                self.unwatch(job, &caller);
                return self.responder.send(&caller, ResponseBody::Error(e)).await;
            }
        };
        let Some(wait) = wait.filter(|_| !view.complete()) else {
            if wait.is_none() || self.unwatch(job, &caller) {
                self.responder.send(&caller, ResponseBody::Job(view)).await;
            }
            return;
        };
        let history = self.clone();
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        self.tasks
            .spawn(async move { history.watch(job, view, deadline, caller).await });
    }

    fn watchers(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Caller>>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops watching `job` for `caller`; false if it was no longer watching (a return
    /// already answered it).
    fn unwatch(&self, job: Uuid, caller: &Caller) -> bool {
        let mut watchers = self.watchers();
        let Some(list) = watchers.get_mut(&job) else {
            return false;
        };
        let before = list.len();
        list.retain(|c| c.nonce != caller.nonce);
        let removed = list.len() < before;
        if list.is_empty() {
            watchers.remove(&job);
        }
        removed
    }

    /// Wakes at each time-driven state change until the job completes or `deadline`;
    /// then answers `caller` unless a return already did.
    async fn watch(
        &self,
        job: Uuid,
        mut view: JobView,
        deadline: tokio::time::Instant,
        caller: Caller,
    ) {
        loop {
            let change = next_change_ms(&view).map(|at| {
                tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
            });
            let wake = change.map_or(deadline, |c| c.min(deadline));
            tokio::time::sleep_until(wake).await;
            match self.view(job).await {
                Ok(fresh) => view = fresh,
                Err(e) => {
                    tracing::warn!(%job, "watching a job: {e}");
                    break;
                }
            }
            if view.complete() || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        if self.unwatch(job, &caller) {
            self.responder.send(&caller, ResponseBody::Job(view)).await;
        }
    }

    /// A return was recorded for `job`: answers the watchers if it completed the job.
    pub async fn returned(&self, job: Uuid) {
        let watched = self
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&job);
        if !watched {
            return;
        }
        let Ok(view) = self.view(job).await else {
            return;
        };
        if !view.complete() {
            return;
        }
        let callers = self
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job)
            .unwrap_or_default();
        for caller in callers {
            self.responder
                .send(&caller, ResponseBody::Job(view.clone()))
                .await;
        }
    }

    /// Answers `dispatch jobs`.
    pub async fn list(&self, query: JobQuery) -> ResponseBody {
        match self.listing(query).await {
            Ok(jobs) => ResponseBody::Jobs(jobs),
            Err(e) => ResponseBody::Error(e),
        }
    }

    async fn listing(&self, query: JobQuery) -> Result<Vec<JobListing>, String> {
        let limit = query.limit.clamp(1, MAX_LIMIT) as usize;
        let pattern = match &query.target {
            Some(text) => Some(Target::pattern(text).map_err(|e| e.to_string())?),
            None => None,
        };
        let since = query.since_ms.unwrap_or(0);
        let mut before: Option<(u64, Uuid)> = None;
        let mut listed = Vec::new();
        loop {
            let page = self
                .blocking(move |store| {
                    let jobs = store.page(before, since, PAGE.max(limit))?;
                    let mut with_returns = Vec::with_capacity(jobs.len());
                    for job in jobs {
                        let returns = store.returns(&job.id)?;
                        with_returns.push((job, returns));
                    }
                    Ok(with_returns)
                })
                .await?;
            let exhausted = page.len() < PAGE.max(limit);
            let now = now_ms();
            for (job, returns) in &page {
                before = Some((job.submitted_at_ms, job.id));
                if !pattern
                    .as_ref()
                    .is_none_or(|p| target_matches(p, &job.target))
                {
                    continue;
                }
                let listing = listing(&view(job, returns, now));
                if query
                    .status
                    .is_none_or(|s| listing.counts.iter().any(|(state, _)| *state == s))
                {
                    listed.push(listing);
                    if listed.len() == limit {
                        return Ok(listed);
                    }
                }
            }
            if exhausted {
                return Ok(listed);
            }
        }
    }

    /// Deletes the jobs submitted before `keep` ago, a batch at a time.
    pub async fn prune(&self, keep: Duration) {
        let before = now_ms().saturating_sub(keep.as_millis() as u64);
        let mut total = 0;
        loop {
            match self
                .blocking(move |store| store.prune(before, PRUNE_BATCH))
                .await
            {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => {
                    tracing::warn!("pruning old jobs: {e}");
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(jobs = total, "pruned jobs older than --keep-jobs");
        }
    }
}

/// Whether the job `target`, as typed, is matched by `pattern`: the same target, or a
/// plain id or pattern that the pattern covers.
fn target_matches(pattern: &Target, target: &Target) -> bool {
    match (pattern, target) {
        (Target::All, _) => true,
        (Target::Pattern(p), Target::Pattern(t)) => p == t || topic_matches(p, t),
        (Target::Pattern(p), Target::List(ids)) => ids.iter().any(|id| topic_matches(p, id)),
        (p, t) => p == t,
    }
}

/// Where each expected minion of `job` stands at `now`.
pub fn view(job: &JobRecord, returns: &[ReturnRecord], now: u64) -> JobView {
    let minions = job
        .expected
        .iter()
        .map(|minion| {
            let returned = returns.iter().find(|r| r.minion == *minion);
            MinionReturn {
                minion: minion.clone(),
                state: state(job, minion, returned.map(|r| &r.outcome), now),
                arrived_at_ms: returned.map(|r| r.arrived_at_ms),
                outcome: returned.map(|r| r.outcome.clone()),
            }
        })
        .collect();
    JobView {
        job_id: job.id,
        submitted_by: job.submitted_by.clone(),
        submitted_at_ms: job.submitted_at_ms,
        origin: job.origin.clone(),
        target: job.target.to_string(),
        exec: job.exec.clone(),
        wait_ms: job.wait_ms,
        ttl_ms: job.ttl_ms,
        expires_at_ms: job.expires_at_ms,
        minions,
    }
}

fn state(job: &JobRecord, minion: &str, outcome: Option<&Outcome>, now: u64) -> MinionState {
    match outcome {
        Some(Outcome::Finished(result)) if result.succeeded() => MinionState::Succeeded,
        Some(Outcome::Finished(_)) => MinionState::Failed,
        Some(Outcome::Refused { .. }) => MinionState::Refused,
        Some(Outcome::Interrupted) => MinionState::Interrupted,
        None if job.offline.iter().any(|m| m == minion) => {
            if now > job.expires_at_ms {
                MinionState::Expired
            } else {
                MinionState::Queued
            }
        }
        None if now > running_deadline(job) => MinionState::TimedOut,
        None => MinionState::Running,
    }
}

/// When a connected minion's return is overdue: its exec timeout (or the TTL when the
/// command has none) plus [`RETURN_GRACE`].
fn running_deadline(job: &JobRecord) -> u64 {
    let runs_for = job.exec.timeout_ms.unwrap_or(job.ttl_ms);
    job.submitted_at_ms + runs_for + RETURN_GRACE.as_millis() as u64
}

/// When the next state of `view` changes by time alone, if one will.
fn next_change_ms(view: &JobView) -> Option<u64> {
    let runs_for = view.exec.timeout_ms.unwrap_or(view.ttl_ms);
    view.minions
        .iter()
        .filter_map(|m| match m.state {
            MinionState::Queued => Some(view.expires_at_ms + 1),
            MinionState::Running => {
                Some(view.submitted_at_ms + runs_for + RETURN_GRACE.as_millis() as u64 + 1)
            }
            _ => None,
        })
        .min()
}

/// The one-line summary of a job.
fn listing(view: &JobView) -> JobListing {
    let mut counts: Vec<(MinionState, u32)> = Vec::new();
    for state in MinionState::ALL {
        let n = view.minions.iter().filter(|m| m.state == state).count() as u32;
        if n > 0 {
            counts.push((state, n));
        }
    }
    JobListing {
        job_id: view.job_id,
        submitted_by: view.submitted_by.clone(),
        submitted_at_ms: view.submitted_at_ms,
        origin: view.origin.clone(),
        target: view.target.clone(),
        command: view.exec.argv.clone(),
        counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_common::message::{Exec, ExecResult};

    fn job(now: u64) -> JobRecord {
        JobRecord {
            id: Uuid::now_v7(),
            submitted_by: "operator.local".into(),
            submitted_at_ms: now,
            origin: "cli".into(),
            target: Target::pattern("web.*").unwrap(),
            expected: vec!["web.01".into(), "web.02".into(), "web.03".into()],
            offline: vec!["web.03".into()],
            exec: Exec {
                argv: vec!["true".into()],
                shell: false,
                env: vec![],
                cwd: None,
                timeout_ms: Some(60_000),
            },
            wait_ms: 30_000,
            ttl_ms: 3_600_000,
            expires_at_ms: now + 3_600_000,
            request_nonce: None,
        }
    }

    fn states(view: &JobView) -> Vec<MinionState> {
        view.minions.iter().map(|m| m.state).collect()
    }

    #[test]
    fn minions_without_returns_run_then_time_out_or_wait_queued_then_expire() {
        let job = job(1_000);
        let done = ReturnRecord {
            minion: "web.01".into(),
            arrived_at_ms: 1_500,
            outcome: Outcome::Finished(ExecResult {
                exit_code: Some(0),
                ..ExecResult::default()
            }),
        };
        let now = view(&job, std::slice::from_ref(&done), 2_000);
        use MinionState::*;
        assert_eq!(states(&now), [Succeeded, Running, Queued]);
        assert!(!now.complete());
        assert_eq!(next_change_ms(&now), Some(1_000 + 60_000 + 15_000 + 1));
        let later = view(&job, std::slice::from_ref(&done), 1_000 + 80_000);
        assert_eq!(states(&later), [Succeeded, TimedOut, Queued]);
        let expired = view(&job, &[done], 1_000 + 3_600_001);
        assert_eq!(states(&expired), [Succeeded, TimedOut, Expired]);
        assert!(expired.complete());
    }

    #[test]
    fn listings_count_states_and_targets_match_as_typed_or_covered() {
        let job = job(1_000);
        let counts = listing(&view(&job, &[], 2_000)).counts;
        assert_eq!(
            counts,
            [(MinionState::Running, 2), (MinionState::Queued, 1)]
        );
        let web = Target::pattern("web.*").unwrap();
        assert!(target_matches(&web, &Target::pattern("web.01").unwrap()));
        assert!(target_matches(&web, &web));
        assert!(!target_matches(&web, &Target::pattern("db.*").unwrap()));
        assert!(target_matches(
            &Target::Group("db".into()),
            &Target::Group("db".into())
        ));
    }
}
