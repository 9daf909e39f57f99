//! The task that fires schedules: it keeps every [`Schedule`] in memory (and in the job
//! store), asks [`decide`] what each one should do now, acts on the answer, and sleeps
//! until the earliest next fire time or until a schedule changes.
//!
//! A firing is an ordinary job, with the schedule's name as its origin, started by
//! [`Jobs::launch`] after the splay delay. Its fire time is settled (and stored) before
//! the job starts, so a crash in between loses that firing rather than running it twice.
//! For the overlap check, the previous firing "still runs" when one of its minions that
//! was online is still running it, or while the firing waits out its splay; copies
//! queued for offline minions do not count.

use crate::history::History;
use crate::jobs::{Jobs, Submitter};
use crate::rpc::{Caller, Responder};
use crate::schedule::{Clock, CronSpec, Decision, Schedule, decide, to_ms};
use crate::store::JobStore;
use dispatch_common::rpc::{JobStarted, MinionState, ResponseBody, ScheduleInfo, ScheduleSpec};
use rand::SeedableRng;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Longest sleep between two looks at the schedules (a clock stepped forward is noticed
/// at the latest then).
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Fire times shown for a new or listed schedule.
const SHOWN_FIRE_TIMES: usize = 3;
/// The `submitted_by` of scheduled jobs.
pub const SCHEDULE_SUBMITTER: &str = "schedule";

/// The schedules and what fires them.
pub struct Scheduler {
    jobs: Arc<Jobs>,
    history: Arc<History>,
    responder: Arc<Responder>,
    clock: Arc<dyn Clock>,
    schedules: Mutex<BTreeMap<String, Schedule>>,
    /// Schedules whose firing waits out its splay.
    splaying: Mutex<HashSet<String>>,
    changed: Notify,
}

impl Scheduler {
    /// Loads the stored schedules; a schedule that no longer parses is logged and kept
    /// (it never fires until it is removed and added again).
    pub fn open(
        jobs: Arc<Jobs>,
        history: Arc<History>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, crate::store::StoreError> {
        let stored = history.store.schedules()?;
        for schedule in &stored {
            if let Err(e) = schedule.spec() {
                tracing::error!(schedule = %schedule.name, "the stored schedule never fires: {e}");
            }
        }
        let schedules = stored.into_iter().map(|s| (s.name.clone(), s)).collect();
        Ok(Arc::new(Self {
            responder: history.responder.clone(),
            jobs,
            history,
            clock,
            schedules: Mutex::new(schedules),
            splaying: Mutex::default(),
            changed: Notify::new(),
        }))
    }

    fn schedules(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Schedule>> {
        self.schedules.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self) -> &Arc<JobStore> {
        &self.history.store
    }

    /// Writes `schedule` to the store (blocking; small).
    fn persist(&self, schedule: &Schedule) {
        if let Err(e) = self.store().put_schedule(schedule) {
            tracing::error!(schedule = %schedule.name, "storing the schedule: {e}");
        }
    }

    /// Fires schedules until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut rng = rand::rngs::StdRng::from_os_rng();
        loop {
            let now = self.clock.now();
            let names: Vec<String> = self.schedules().keys().cloned().collect();
            let mut wake = now + chrono::TimeDelta::from_std(MAX_SLEEP).expect("small");
            let mut acted = false;
            for name in names {
                let Some(schedule) = self.schedules().get(&name).cloned() else {
                    continue;
                };
                let Ok(spec) = schedule.spec() else {
                    continue;
                };
                let running = self.still_running(&schedule).await;
                let decision = decide(&schedule, &spec, now, running, &mut rng);
                match &decision {
                    Decision::Wait { until } => wake = wake.min(*until),
                    Decision::Paused | Decision::Exhausted => {}
                    Decision::Fire {
                        splay_delay,
                        missed,
                        ..
                    } => {
                        acted = true;
                        if *missed > 0 {
                            tracing::info!(schedule = %name, "firing once for {missed} earlier fire times missed");
                        }
                        self.settle(&name, &decision);
                        self.fire_later(name, *splay_delay);
                    }
                    Decision::SkipOverlap { .. } | Decision::SkipMissed { .. } => {
                        acted = true;
                        tracing::info!(schedule = %name, ?decision, "skipped a firing");
                        self.settle(&name, &decision);
                    }
                }
            }
            if acted {
                continue;
            }
            let sleep = (wake - self.clock.now()).to_std().unwrap_or_default();
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.changed.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Records `decision` in the schedule and stores it.
    fn settle(&self, name: &str, decision: &Decision) {
        let mut schedules = self.schedules();
        if let Some(schedule) = schedules.get_mut(name) {
            schedule.record(decision, None);
            self.persist(schedule);
        }
    }

    /// Starts the schedule's job after `delay`, as a step a stop does not cut in half.
    fn fire_later(self: &Arc<Self>, name: String, delay: Duration) {
        self.splaying().insert(name.clone());
        let scheduler = self.clone();
        self.history.tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            let tasks = scheduler.history.tasks.clone();
            tasks.spawn_step(async move {
                let _ = scheduler.fire(&name).await;
                scheduler.splaying().remove(&name);
            });
        });
    }

    fn splaying(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.splaying.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a job for schedule `name` now; notes it as the schedule's last job.
    async fn fire(&self, name: &str) -> Result<JobStarted, String> {
        let run = self
            .schedules()
            .get(name)
            .map(|s| s.run.clone())
            .ok_or_else(|| format!("no schedule '{name}'"))?;
        let submitter = Submitter {
            by: SCHEDULE_SUBMITTER.to_owned(),
            origin: name.to_owned(),
            request_nonce: None,
        };
        let started = self.jobs.launch(submitter, run).await;
        let mut schedules = self.schedules();
        let schedule = schedules.get_mut(name);
        match (started, schedule) {
            (Ok(started), Some(schedule)) => {
                tracing::info!(schedule = %name, job = %started.job_id, "fired");
                schedule.last_job = Some(started.job_id);
                self.persist(schedule);
                Ok(started)
            }
            (Err(reason), Some(schedule)) => {
                tracing::warn!(schedule = %name, "firing failed: {reason}");
                schedule.last_outcome = Some(format!("failed to start: {reason}"));
                self.persist(schedule);
                Err(reason)
            }
            (started, None) => started,
        }
    }

    /// Whether the previous firing still runs on an online minion (or waits out its
    /// splay).
    async fn still_running(&self, schedule: &Schedule) -> bool {
        if self.splaying().contains(&schedule.name) {
            return true;
        }
        let Some(job) = schedule.last_job else {
            return false;
        };
        match self.history.view(job).await {
            Ok(view) => view.minions.iter().any(|m| m.state == MinionState::Running),
            Err(_) => false,
        }
    }

    /// Answers the schedule verbs of the RPC API.
    pub async fn answer(self: &Arc<Self>, request: ScheduleRequest, caller: &Caller) {
        let body = match request {
            ScheduleRequest::Add(spec) => self.add(*spec),
            ScheduleRequest::List(name) => self.list(name.as_deref()).await,
            ScheduleRequest::Remove(name) => self.remove(&name),
            ScheduleRequest::Pause(name) => self.set_paused(&name, true),
            ScheduleRequest::Resume(name) => self.set_paused(&name, false),
            ScheduleRequest::RunNow(name) => match self.run_now(&name).await {
                Ok(started) => ResponseBody::Started(started),
                Err(e) => ResponseBody::Error(e),
            },
        };
        self.responder.send(caller, body).await;
    }

    fn add(&self, spec: ScheduleSpec) -> ResponseBody {
        let now = self.clock.now();
        let mut schedule =
            match Schedule::new(&spec.name, &spec.cron, &spec.tz, spec.run.clone(), now) {
                Ok(schedule) => schedule,
                Err(e) => return ResponseBody::Error(e.to_string()),
            };
        schedule.overlap = spec.overlap;
        schedule.missed = spec.missed;
        schedule.splay_ms = spec.splay_ms;
        schedule.run.detach = true;
        {
            let mut schedules = self.schedules();
            if schedules.contains_key(&spec.name) {
                return ResponseBody::Error(format!(
                    "a schedule '{}' exists; `dispatch schedule remove {}` first to replace it",
                    spec.name, spec.name
                ));
            }
            self.persist(&schedule);
            schedules.insert(spec.name.clone(), schedule.clone());
        }
        self.changed.notify_one();
        ResponseBody::Schedules(vec![self.info(&schedule, now)])
    }

    async fn list(&self, name: Option<&str>) -> ResponseBody {
        let now = self.clock.now();
        let schedules: Vec<Schedule> = self
            .schedules()
            .values()
            .filter(|s| name.is_none_or(|n| s.name == n))
            .cloned()
            .collect();
        if let (Some(name), true) = (name, schedules.is_empty()) {
            return ResponseBody::Error(format!(
                "no schedule '{name}'; `dispatch schedule list` shows them"
            ));
        }
        let mut infos = Vec::with_capacity(schedules.len());
        for schedule in &schedules {
            let mut info = self.info(schedule, now);
            if let Some(job) = schedule.last_job
                && let Ok(view) = self.history.view(job).await
            {
                let started = info.last_outcome.take().unwrap_or_default();
                info.last_outcome = Some(format!("{started}; job: {}", outcome_of(&view)));
            }
            infos.push(info);
        }
        ResponseBody::Schedules(infos)
    }

    fn remove(&self, name: &str) -> ResponseBody {
        let removed = self.schedules().remove(name).is_some();
        if let Err(e) = self.store().delete_schedule(name) {
            return ResponseBody::Error(e.to_string());
        }
        self.changed.notify_one();
        if removed {
            ResponseBody::Done(vec![format!("removed schedule {name}")])
        } else {
            ResponseBody::Error(format!(
                "no schedule '{name}'; `dispatch schedule list` shows them"
            ))
        }
    }

    fn set_paused(&self, name: &str, paused: bool) -> ResponseBody {
        let now = self.clock.now();
        let mut schedules = self.schedules();
        let Some(schedule) = schedules.get_mut(name) else {
            return ResponseBody::Error(format!(
                "no schedule '{name}'; `dispatch schedule list` shows them"
            ));
        };
        if paused {
            schedule.pause();
        } else {
            schedule.resume(now);
        }
        self.persist(schedule);
        drop(schedules);
        self.changed.notify_one();
        let verb = if paused { "paused" } else { "resumed" };
        ResponseBody::Done(vec![format!("{verb} schedule {name}")])
    }

    async fn run_now(&self, name: &str) -> Result<JobStarted, String> {
        let started = self.fire(name).await?;
        if let Some(schedule) = self.schedules().get_mut(name) {
            schedule.record_run_now(started.job_id);
            self.persist(schedule);
        }
        Ok(started)
    }

    fn info(&self, schedule: &Schedule, now: chrono::DateTime<chrono::Utc>) -> ScheduleInfo {
        let next_runs_ms = match schedule.spec() {
            Ok(spec) => next_times(schedule, &spec, now),
            Err(_) => Vec::new(),
        };
        ScheduleInfo {
            spec: ScheduleSpec {
                name: schedule.name.clone(),
                cron: schedule.cron.clone(),
                tz: schedule.tz.clone(),
                run: schedule.run.clone(),
                overlap: schedule.overlap,
                missed: schedule.missed,
                splay_ms: schedule.splay_ms,
            },
            paused: schedule.paused,
            created_at_ms: schedule.created_at_ms,
            next_runs_ms,
            last_fired_ms: schedule.last_fired_ms,
            last_job: schedule.last_job,
            last_outcome: schedule.last_outcome.clone(),
        }
    }
}

/// The schedule's next fire times after `now` (none while paused).
fn next_times(
    schedule: &Schedule,
    spec: &CronSpec,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<u64> {
    let Some(first) = schedule.next_run(spec, now) else {
        return Vec::new();
    };
    std::iter::once(first)
        .chain(spec.next_fire_times(first, SHOWN_FIRE_TIMES - 1))
        .map(to_ms)
        .collect()
}

/// A job's states in a few words: "2 succeeded, 1 running".
fn outcome_of(view: &dispatch_common::rpc::JobView) -> String {
    let mut counts: BTreeMap<MinionState, usize> = BTreeMap::new();
    for minion in &view.minions {
        *counts.entry(minion.state).or_default() += 1;
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(state, n)| format!("{n} {}", state.as_str()))
        .collect();
    parts.join(", ")
}

/// A schedule verb, as the RPC server hands it over.
#[derive(Debug, Clone)]
pub enum ScheduleRequest {
    Add(Box<ScheduleSpec>),
    List(Option<String>),
    Remove(String),
    Pause(String),
    Resume(String),
    RunNow(String),
}
