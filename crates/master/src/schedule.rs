//! Scheduled jobs: cron expressions that fire ordinary jobs, and the pure decision of
//! when a schedule fires.
//!
//! This module does no I/O and never waits. The daemon keeps [`Schedule`]s in its store,
//! parses each one's expression once into a [`CronSpec`], and asks [`decide`] what to do
//! with the time a [`Clock`] gives it: wait until a fire time, fire (after a splay
//! delay), or record a skipped firing. It then calls [`Schedule::record`] with what it
//! did and stores the schedule again. Tests drive the same loop with a [`ManualClock`].
//!
//! # Time model
//!
//! Instants are UTC: a schedule stores milliseconds since the Unix epoch, and every
//! function here takes and returns `DateTime<Utc>`. A cron expression is evaluated
//! against the wall clock of the schedule's zone (an IANA name, default `UTC`; the zone
//! database is compiled in, so a zone means the same on every host). `@midnight` is read
//! as `@daily`; the other aliases, the optional seconds field and the extensions (`L`,
//! `W`, `#`, `+`) are croner's.
//!
//! # Daylight-saving changes
//!
//! The rules are croner's documented ones, pinned by this module's tests:
//!
//! - Spring forward (a wall-clock range does not exist): a *fixed-time* expression
//!   (one value each for second, minute and hour, e.g. `30 2 * * *`) whose time falls in
//!   the gap fires once, at the first wall-clock time after the gap on the same day
//!   (03:00 in Europe/Berlin); an *interval* expression (`*/15 * * * *`, `* 2 * * *`)
//!   skips the times in the gap.
//! - Fall back (a wall-clock range happens twice): a fixed-time expression fires once, at
//!   the first pass; an interval expression fires in both passes, so it keeps its real
//!   interval.
//!
//! Either way a fixed-time schedule fires exactly once on the day of a change.
//!
//! # Firing, overlap and missed fire times
//!
//! A schedule remembers the last fire time it settled (`last_fired_ms`, fired or
//! skipped); fire times up to it are never considered again, so a clock stepped back or
//! a restarted master cannot fire one twice. [`decide`] looks at the fire times due since
//! then (or since the schedule was created):
//!
//! - A fire time at most [`MISSED_GRACE`] old is on time. It fires, standing for any
//!   earlier ones that passed unrun — one firing, never a burst.
//! - If even the latest due fire time is older (the master was down or stalled), the
//!   schedule's [`MissedPolicy`] applies: `Skip` (the default) records them all as
//!   skipped in one go; `RunOnce` fires once, now.
//! - Before firing, the [`OverlapPolicy`] applies: with `Skip` (the default) a firing is
//!   recorded as skipped while the previous firing still runs on *online* minions (the
//!   caller decides that; copies waiting in an offline minion's queue do not count, per
//!   DESIGN §7); `Allow` fires anyway.
//! - A firing starts after a random splay delay in `0..splay_ms`, so many minions do
//!   not hit one backend at the same second.
//! - A paused schedule never fires; resuming it does not count the paused time as
//!   missed.

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use dispatch_common::names::{NameError, check_name};
use dispatch_common::rpc::RunSpec;
pub use dispatch_common::rpc::{MissedPolicy, OverlapPolicy};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use uuid::Uuid;

/// The zone a schedule is evaluated in when none is given.
pub const DEFAULT_TZ: &str = "UTC";

/// How late a fire time may be handled and still count as on time rather than missed.
/// The daemon wakes at fire times, so only a master that was down or stalled is later.
pub const MISSED_GRACE: Duration = Duration::from_secs(60);

/// Missed fire times are counted up to this many (an every-second schedule after days of
/// downtime would otherwise mean a long walk); a larger count shows as this number.
pub const MISSED_COUNT_LIMIT: u64 = 10_000;

/// Why a schedule or its expression is refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(
        "invalid cron expression '{expr}': {reason}; use 5 fields (minute hour day-of-month \
         month day-of-week, e.g. '*/5 * * * *'), 6 with seconds first, or an alias such as \
         @hourly or @daily"
    )]
    Cron { expr: String, reason: String },
    #[error(
        "cron expression '{expr}' never fires (no date matches it); check the day-of-month \
         and month fields"
    )]
    NeverFires { expr: String },
    #[error(
        "unknown time zone '{tz}': {reason}; use an IANA zone name such as UTC, \
         Europe/Berlin or America/New_York"
    )]
    Zone { tz: String, reason: String },
}

/// A parsed cron expression and the zone it is evaluated in.
#[derive(Debug, Clone)]
pub struct CronSpec {
    expr: String,
    tz: Tz,
    cron: Cron,
}

impl CronSpec {
    /// Parses `expr` (5 fields, 6 with seconds first, or an `@` alias) for the IANA zone
    /// `tz`. Refuses, with the parser's reason, an invalid expression, an unknown zone and
    /// an expression no date matches.
    pub fn parse(expr: &str, tz: &str) -> Result<Self, ScheduleError> {
        let zone: Tz = tz
            .parse()
            .map_err(|e: chrono_tz::ParseError| ScheduleError::Zone {
                tz: tz.to_owned(),
                reason: e.to_string(),
            })?;
        let refuse = |reason: String| ScheduleError::Cron {
            expr: expr.to_owned(),
            reason,
        };
        let trimmed = expr.trim();
        let pattern = if trimmed.eq_ignore_ascii_case("@midnight") {
            // Vixie cron's synonym; croner knows only @daily.
            "@daily"
        } else if trimmed.eq_ignore_ascii_case("@reboot") {
            return Err(refuse("@reboot is not a time of day".to_owned()));
        } else {
            trimmed
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| refuse(e.to_string()))?;
        let spec = Self {
            expr: expr.to_owned(),
            tz: zone,
            cron,
        };
        // Without a year field an expression that matches once matches every 400 years
        // (the Gregorian cycle), so one search tells whether it ever fires.
        if spec.next_after(DateTime::UNIX_EPOCH).is_none() {
            return Err(ScheduleError::NeverFires {
                expr: expr.to_owned(),
            });
        }
        Ok(spec)
    }

    /// The expression as typed.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The zone the expression is evaluated in.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// `at` on the wall clock of the schedule's zone, for showing to people.
    pub fn local(&self, at: DateTime<Utc>) -> DateTime<Tz> {
        at.with_timezone(&self.tz)
    }

    /// The first fire time strictly after `after`, or `None` if there is none before the
    /// year 5000 (croner's limit).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&self.local(after), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The next `n` fire times strictly after `from` (fewer only near the year 5000).
    pub fn next_fire_times(&self, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.cron
            .iter_after(self.local(from))
            .take(n)
            .map(|t| t.with_timezone(&Utc))
            .collect()
    }

    /// How many fire times lie in `(after, now]` (at most [`MISSED_COUNT_LIMIT`]) and the
    /// latest of them, or `None` when there is none.
    fn due(&self, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<(u64, DateTime<Utc>)> {
        let mut count = 0;
        let mut latest = None;
        for t in self.cron.iter_after(self.local(after)) {
            let t = t.with_timezone(&Utc);
            if t > now {
                break;
            }
            count += 1;
            latest = Some(t);
            if count == MISSED_COUNT_LIMIT {
                // Jump to the latest instead of walking on.
                if let Ok(last) = self.cron.find_previous_occurrence(&self.local(now), true) {
                    latest = Some(last.with_timezone(&Utc));
                }
                break;
            }
        }
        latest.map(|latest| (count, latest))
    }
}

/// A named cron schedule that fires a run request, as the master stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    /// The cron expression as typed.
    pub cron: String,
    /// The IANA zone the expression is evaluated in.
    #[serde(default = "default_tz")]
    pub tz: String,
    /// What each firing runs.
    pub run: RunSpec,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub overlap: OverlapPolicy,
    #[serde(default)]
    pub missed: MissedPolicy,
    /// Start each firing after a random delay below this many milliseconds.
    #[serde(default)]
    pub splay_ms: Option<u64>,
    pub created_at_ms: u64,
    /// The last fire time settled, fired or skipped: fire times up to it are never
    /// considered again. It only moves forward.
    #[serde(default)]
    pub last_fired_ms: Option<u64>,
    /// The job of the last firing (or `run-now`); the one an overlap check looks at.
    #[serde(default)]
    pub last_job: Option<Uuid>,
    /// What became of the last firing, for `dispatch schedule list`.
    #[serde(default)]
    pub last_outcome: Option<String>,
}

fn default_tz() -> String {
    DEFAULT_TZ.to_owned()
}

impl Schedule {
    /// A new, active schedule with the default policies, created at `now`. Refuses a bad
    /// name, expression or zone.
    pub fn new(
        name: &str,
        cron: &str,
        tz: &str,
        run: RunSpec,
        now: DateTime<Utc>,
    ) -> Result<Self, ScheduleError> {
        check_name("schedule", name)?;
        CronSpec::parse(cron, tz)?;
        Ok(Self {
            name: name.to_owned(),
            cron: cron.to_owned(),
            tz: tz.to_owned(),
            run,
            paused: false,
            overlap: OverlapPolicy::default(),
            missed: MissedPolicy::default(),
            splay_ms: None,
            created_at_ms: to_ms(now),
            last_fired_ms: None,
            last_job: None,
            last_outcome: None,
        })
    }

    /// Parses the stored expression and zone (once per load; keep the result).
    pub fn spec(&self) -> Result<CronSpec, ScheduleError> {
        CronSpec::parse(&self.cron, &self.tz)
    }

    /// Fire times after this one are the ones still to settle.
    fn settled_through(&self) -> DateTime<Utc> {
        from_ms(self.last_fired_ms.unwrap_or(self.created_at_ms))
    }

    /// The next fire time to show in `dispatch schedule list`, `None` while paused.
    pub fn next_run(&self, spec: &CronSpec, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.paused {
            return None;
        }
        spec.next_after(now.max(self.settled_through()))
    }

    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Resumes at `now`: fire times that passed while paused are settled, not missed.
    pub fn resume(&mut self, now: DateTime<Utc>) {
        if self.paused {
            self.paused = false;
            self.settle(now);
        }
    }

    /// Notes what the daemon did with `decision` (`started` is the job a `Fire` started),
    /// so the fire times it settled are never considered again.
    pub fn record(&mut self, decision: &Decision, started: Option<Uuid>) {
        match *decision {
            Decision::Fire { at, missed, .. } => {
                self.settle(at);
                self.last_job = started;
                self.last_outcome = Some(match missed {
                    0 => "started".to_owned(),
                    n => format!("started ({n} earlier fire times missed)"),
                });
            }
            Decision::SkipOverlap { at } => {
                self.settle(at);
                self.last_outcome = Some("skipped: the previous run is still running".into());
            }
            Decision::SkipMissed { count, through } => {
                self.settle(through);
                self.last_outcome = Some(format!(
                    "skipped {count} fire times missed while the master was down"
                ));
            }
            Decision::Wait { .. } | Decision::Paused | Decision::Exhausted => {}
        }
    }

    /// Notes a `dispatch schedule run-now` job: the next firing's overlap check looks at
    /// it, and the fire times stay as they are.
    pub fn record_run_now(&mut self, job: Uuid) {
        self.last_job = Some(job);
        self.last_outcome = Some("started by run-now".to_owned());
    }

    fn settle(&mut self, through: DateTime<Utc>) {
        let through = to_ms(through);
        self.last_fired_ms = Some(self.last_fired_ms.map_or(through, |t| t.max(through)));
    }
}

/// What the daemon should do with a schedule now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due; decide again at `until`.
    Wait { until: DateTime<Utc> },
    /// Start a job for the fire time `at` after `splay_delay`. `missed` earlier fire times
    /// passed unrun; this firing stands for them.
    Fire {
        at: DateTime<Utc>,
        splay_delay: Duration,
        missed: u64,
    },
    /// The fire time `at` is skipped: online minions still run the previous firing.
    SkipOverlap { at: DateTime<Utc> },
    /// `count` fire times through `through` passed while the master was down and are
    /// skipped.
    SkipMissed { count: u64, through: DateTime<Utc> },
    /// The schedule is paused: nothing fires until it is resumed.
    Paused,
    /// The expression has no fire time left (only near the year 5000).
    Exhausted,
}

/// Decides what to do with `schedule` (whose parsed expression is `spec`) at `now`.
/// `previous_still_running` says whether online minions still run the job of its last
/// firing (`schedule.last_job`); `rng` draws the splay delay. Pure: act on the answer,
/// then call [`Schedule::record`], then ask again.
pub fn decide(
    schedule: &Schedule,
    spec: &CronSpec,
    now: DateTime<Utc>,
    previous_still_running: bool,
    rng: &mut impl Rng,
) -> Decision {
    debug_assert_eq!(
        spec.expr(),
        schedule.cron,
        "spec parsed from another schedule"
    );
    if schedule.paused {
        return Decision::Paused;
    }
    let settled = schedule.settled_through();
    let Some((count, latest)) = spec.due(settled, now) else {
        return match spec.next_after(settled.max(now)) {
            Some(until) => Decision::Wait { until },
            None => Decision::Exhausted,
        };
    };
    let on_time = now - latest <= TimeDelta::from_std(MISSED_GRACE).unwrap_or(TimeDelta::MAX);
    if !on_time && schedule.missed == MissedPolicy::Skip {
        return Decision::SkipMissed {
            count,
            through: latest,
        };
    }
    if previous_still_running && schedule.overlap == OverlapPolicy::Skip {
        return Decision::SkipOverlap { at: latest };
    }
    Decision::Fire {
        at: latest,
        splay_delay: splay_delay(schedule.splay_ms, rng),
        missed: count - 1,
    }
}

/// A random delay in `0..splay_ms`, zero without a splay.
fn splay_delay(splay_ms: Option<u64>, rng: &mut impl Rng) -> Duration {
    match splay_ms {
        Some(ms) if ms > 0 => Duration::from_millis(rng.random_range(0..ms)),
        _ => Duration::ZERO,
    }
}

/// Milliseconds since the Unix epoch, as the store keeps instants.
pub fn to_ms(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

/// The instant `ms` milliseconds after the Unix epoch (saturating at chrono's limit).
pub fn from_ms(ms: u64) -> DateTime<Utc> {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Where the daemon reads the time, so tests can set it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += TimeDelta::from_std(by).expect("a test advances the clock by a sane amount");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use dispatch_common::message::Exec;
    use dispatch_common::target::Target;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn local_hms(spec: &CronSpec, at: DateTime<Utc>) -> String {
        spec.local(at).format("%Y-%m-%d %H:%M:%S %Z").to_string()
    }

    fn run_spec() -> RunSpec {
        RunSpec {
            target: Target::pattern("db.*").unwrap(),
            exec: Exec {
                argv: vec!["backup".into()],
                shell: false,
                env: Vec::new(),
                cwd: None,
                timeout_ms: None,
            },
            wait_ms: 10_000,
            ttl_ms: 60_000,
            batch: None,
            detach: true,
        }
    }

    fn new_schedule(cron: &str, tz: &str, created: DateTime<Utc>) -> (Schedule, CronSpec) {
        let schedule = Schedule::new("backup.db", cron, tz, run_spec(), created).unwrap();
        let spec = schedule.spec().unwrap();
        (schedule, spec)
    }

    /// Drives `schedule` the way the daemon does, from the clock's time up to `end`:
    /// act on each decision, record it, sleep until the next fire time. Returns every
    /// decision except the waits; `running` says whether the last job still runs.
    fn drive(
        schedule: &mut Schedule,
        spec: &CronSpec,
        clock: &ManualClock,
        end: DateTime<Utc>,
        running: impl Fn(&Schedule, DateTime<Utc>) -> bool,
    ) -> Vec<Decision> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut acted = Vec::new();
        for _ in 0..10_000 {
            let now = clock.now();
            let decision = decide(schedule, spec, now, running(schedule, now), &mut rng);
            match decision {
                Decision::Wait { until } if until > end => return acted,
                Decision::Wait { until } => clock.set(until),
                Decision::Paused | Decision::Exhausted => {
                    acted.push(decision);
                    return acted;
                }
                Decision::Fire { at, .. } => {
                    schedule.record(&decision, Some(job_started_at(at)));
                    acted.push(decision);
                }
                _ => {
                    schedule.record(&decision, None);
                    acted.push(decision);
                }
            }
        }
        panic!("the schedule did not settle: {acted:?}");
    }

    /// A job id as the master makes one: UUIDv7, so it carries its start time.
    fn job_started_at(at: DateTime<Utc>) -> Uuid {
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, at.timestamp() as u64, 0);
        Uuid::new_v7(ts)
    }

    fn job_start(job: Uuid) -> DateTime<Utc> {
        let (secs, _) = job.get_timestamp().unwrap().to_unix();
        DateTime::from_timestamp(secs as i64, 0).unwrap()
    }

    fn fired_at(decisions: &[Decision]) -> Vec<DateTime<Utc>> {
        decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Fire { at, .. } => Some(*at),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn five_fields_parse_and_show_the_next_three_fire_times() {
        let spec = CronSpec::parse("*/5 * * * *", "UTC").unwrap();
        assert_eq!(
            spec.next_fire_times(utc(2025, 1, 1, 10, 2, 0), 3),
            [
                utc(2025, 1, 1, 10, 5, 0),
                utc(2025, 1, 1, 10, 10, 0),
                utc(2025, 1, 1, 10, 15, 0)
            ]
        );
    }

    #[test]
    fn a_sixth_field_in_front_is_seconds() {
        let spec = CronSpec::parse("30 0 2 * * *", "UTC").unwrap();
        assert_eq!(
            spec.next_after(utc(2025, 1, 1, 0, 0, 0)),
            Some(utc(2025, 1, 1, 2, 0, 30))
        );
    }

    #[test]
    fn an_invalid_expression_is_refused_with_the_parsers_reason() {
        let err = CronSpec::parse("61 * * * *", "UTC").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ScheduleError::Cron { .. }), "{err:?}");
        assert!(text.contains("'61 * * * *'"), "{text}");
        assert!(text.contains("Component error"), "{text}"); // croner's reason
        assert!(text.contains("use 5 fields"), "{text}");

        for too_few_or_many in ["* * * *", "0 0 0 1 1 * 2030"] {
            let text = CronSpec::parse(too_few_or_many, "UTC")
                .unwrap_err()
                .to_string();
            assert!(text.contains("must have 5 or 6 fields"), "{text}");
        }
        let text = CronSpec::parse("@reboot", "UTC").unwrap_err().to_string();
        assert!(text.contains("not a time of day"), "{text}");
    }

    #[test]
    fn an_expression_no_date_matches_is_refused() {
        let err = CronSpec::parse("0 0 30 2 *", "UTC").unwrap_err();
        assert!(matches!(err, ScheduleError::NeverFires { .. }), "{err:?}");
        // A leap day is rare but real.
        let spec = CronSpec::parse("0 0 29 2 *", "UTC").unwrap();
        assert_eq!(
            spec.next_after(utc(2025, 1, 1, 0, 0, 0)),
            Some(utc(2028, 2, 29, 0, 0, 0))
        );
    }

    #[test]
    fn an_unknown_zone_is_refused_with_advice() {
        let err = CronSpec::parse("@daily", "Europe/Berln").unwrap_err();
        assert!(matches!(err, ScheduleError::Zone { .. }), "{err:?}");
        assert!(err.to_string().contains("IANA zone name"), "{err}");
    }

    #[test]
    fn aliases_mean_their_five_field_forms() {
        let from = utc(2025, 1, 1, 10, 30, 0); // a Wednesday
        for (alias, same) in [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@HOURLY", "0 * * * *"),
        ] {
            let alias_spec = CronSpec::parse(alias, "UTC").unwrap();
            let same_spec = CronSpec::parse(same, "UTC").unwrap();
            assert_eq!(alias_spec.expr(), alias);
            assert_eq!(
                alias_spec.next_fire_times(from, 3),
                same_spec.next_fire_times(from, 3),
                "{alias}"
            );
        }
    }

    #[test]
    fn every_second_schedule_fires_each_second() {
        let spec = CronSpec::parse("* * * * * *", "UTC").unwrap();
        let from = utc(2025, 1, 1, 10, 0, 0) + TimeDelta::milliseconds(500);
        assert_eq!(
            spec.next_fire_times(from, 3),
            [
                utc(2025, 1, 1, 10, 0, 1),
                utc(2025, 1, 1, 10, 0, 2),
                utc(2025, 1, 1, 10, 0, 3)
            ]
        );

        let created = utc(2025, 1, 1, 10, 0, 0);
        let (mut schedule, spec) = new_schedule("* * * * * *", "UTC", created);
        let clock = ManualClock::new(created);
        let decisions = drive(
            &mut schedule,
            &spec,
            &clock,
            created + TimeDelta::seconds(5),
            |_, _| false,
        );
        assert_eq!(
            fired_at(&decisions),
            (1..=5)
                .map(|s| created + TimeDelta::seconds(s))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn next_after_is_strictly_after() {
        let spec = CronSpec::parse("0 * * * *", "UTC").unwrap();
        let t = utc(2025, 1, 1, 10, 0, 0);
        assert_eq!(spec.next_after(t), Some(utc(2025, 1, 1, 11, 0, 0)));
    }

    #[test]
    fn a_zone_shifts_the_fire_times() {
        let spec = CronSpec::parse("0 2 * * *", "America/New_York").unwrap();
        // 02:00 EST is 07:00 UTC in January.
        assert_eq!(
            spec.next_after(utc(2025, 1, 1, 0, 0, 0)),
            Some(utc(2025, 1, 1, 7, 0, 0))
        );
    }

    // Europe/Berlin: on 2025-03-30 clocks jump from 02:00 CET to 03:00 CEST (01:00 UTC);
    // on 2025-10-26 they go back from 03:00 CEST to 02:00 CET (01:00 UTC).

    #[test]
    fn on_spring_forward_a_fixed_time_in_the_gap_fires_once_right_after_it() {
        let spec = CronSpec::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let times = spec.next_fire_times(utc(2025, 3, 28, 12, 0, 0), 3);
        let local: Vec<_> = times.iter().map(|t| local_hms(&spec, *t)).collect();
        assert_eq!(
            local,
            [
                "2025-03-29 02:30:00 CET",
                "2025-03-30 03:00:00 CEST", // 02:30 does not exist that day
                "2025-03-31 02:30:00 CEST"
            ]
        );
        assert_eq!(times[1], utc(2025, 3, 30, 1, 0, 0));

        // And the daemon, driven across the change, fires it once that day.
        let created = utc(2025, 3, 29, 12, 0, 0);
        let (mut schedule, spec) = new_schedule("30 2 * * *", "Europe/Berlin", created);
        let clock = ManualClock::new(created);
        let decisions = drive(
            &mut schedule,
            &spec,
            &clock,
            utc(2025, 3, 30, 22, 0, 0),
            |_, _| false,
        );
        assert_eq!(fired_at(&decisions), [times[1]]);
    }

    #[test]
    fn on_spring_forward_interval_times_in_the_gap_are_skipped() {
        let spec = CronSpec::parse("*/30 * * * *", "Europe/Berlin").unwrap();
        let times = spec.next_fire_times(utc(2025, 3, 30, 0, 15, 0), 4);
        let local: Vec<_> = times.iter().map(|t| local_hms(&spec, *t)).collect();
        assert_eq!(
            local,
            [
                "2025-03-30 01:30:00 CET",
                "2025-03-30 03:00:00 CEST",
                "2025-03-30 03:30:00 CEST",
                "2025-03-30 04:00:00 CEST"
            ]
        );
    }

    #[test]
    fn on_fall_back_a_fixed_time_in_the_repeated_hour_fires_once() {
        let spec = CronSpec::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let times = spec.next_fire_times(utc(2025, 10, 25, 12, 0, 0), 2);
        let local: Vec<_> = times.iter().map(|t| local_hms(&spec, *t)).collect();
        assert_eq!(
            local,
            ["2025-10-26 02:30:00 CEST", "2025-10-27 02:30:00 CET"]
        );
        // Asked again from the first pass, the second pass does not fire.
        let first_pass = utc(2025, 10, 26, 0, 30, 0);
        assert_eq!(times[0], first_pass);
        assert_eq!(
            spec.next_after(first_pass),
            Some(utc(2025, 10, 27, 1, 30, 0))
        );

        // And the daemon, driven across the change, fires it once that day.
        let created = utc(2025, 10, 25, 12, 0, 0);
        let (mut schedule, spec) = new_schedule("30 2 * * *", "Europe/Berlin", created);
        let clock = ManualClock::new(created);
        let decisions = drive(
            &mut schedule,
            &spec,
            &clock,
            utc(2025, 10, 26, 23, 0, 0),
            |_, _| false,
        );
        assert_eq!(fired_at(&decisions), [first_pass]);
    }

    #[test]
    fn on_fall_back_interval_times_fire_in_both_passes() {
        let spec = CronSpec::parse("30 * * * *", "Europe/Berlin").unwrap();
        let times = spec.next_fire_times(utc(2025, 10, 25, 23, 15, 0), 3);
        let local: Vec<_> = times.iter().map(|t| local_hms(&spec, *t)).collect();
        assert_eq!(
            local,
            [
                "2025-10-26 01:30:00 CEST",
                "2025-10-26 02:30:00 CEST",
                "2025-10-26 02:30:00 CET"
            ]
        );
    }

    #[test]
    fn new_york_changes_follow_the_same_rules() {
        // 2025-03-09 02:00 EST -> 03:00 EDT; 2025-11-02 02:00 EDT -> 01:00 EST.
        let spec = CronSpec::parse("30 2 * * *", "America/New_York").unwrap();
        let spring = spec.next_after(utc(2025, 3, 8, 12, 0, 0)).unwrap();
        assert_eq!(local_hms(&spec, spring), "2025-03-09 03:00:00 EDT");
        let spec = CronSpec::parse("30 1 * * *", "America/New_York").unwrap();
        let fall = spec.next_fire_times(utc(2025, 11, 1, 12, 0, 0), 2);
        let local: Vec<_> = fall.iter().map(|t| local_hms(&spec, *t)).collect();
        assert_eq!(
            local,
            ["2025-11-02 01:30:00 EDT", "2025-11-03 01:30:00 EST"]
        );
    }

    #[test]
    fn a_schedule_waits_for_its_next_fire_time_then_fires() {
        let created = utc(2025, 1, 1, 9, 59, 0);
        let (schedule, spec) = new_schedule("0 * * * *", "UTC", created);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            decide(&schedule, &spec, created, false, &mut rng),
            Decision::Wait {
                until: utc(2025, 1, 1, 10, 0, 0)
            }
        );
        let late = utc(2025, 1, 1, 10, 0, 0) + TimeDelta::milliseconds(20);
        assert_eq!(
            decide(&schedule, &spec, late, false, &mut rng),
            Decision::Fire {
                at: utc(2025, 1, 1, 10, 0, 0),
                splay_delay: Duration::ZERO,
                missed: 0
            }
        );
    }

    #[test]
    fn a_firing_is_skipped_while_the_previous_run_still_runs() {
        let created = utc(2025, 1, 1, 10, 0, 0);
        let (mut schedule, spec) = new_schedule("*/10 * * * * *", "UTC", created);
        let clock = ManualClock::new(created);
        // Each job runs for 25 s on online minions.
        let slow = |s: &Schedule, now: DateTime<Utc>| {
            s.last_job
                .is_some_and(|job| now - job_start(job) < TimeDelta::seconds(25))
        };
        let decisions = drive(
            &mut schedule,
            &spec,
            &clock,
            created + TimeDelta::seconds(60),
            slow,
        );
        let t = |s| created + TimeDelta::seconds(s);
        assert_eq!(
            decisions,
            [
                Decision::Fire {
                    at: t(10),
                    splay_delay: Duration::ZERO,
                    missed: 0
                },
                Decision::SkipOverlap { at: t(20) },
                Decision::SkipOverlap { at: t(30) },
                Decision::Fire {
                    at: t(40),
                    splay_delay: Duration::ZERO,
                    missed: 0
                },
                Decision::SkipOverlap { at: t(50) },
                Decision::SkipOverlap { at: t(60) },
            ]
        );
        assert_eq!(
            schedule.last_outcome.as_deref(),
            Some("skipped: the previous run is still running")
        );
    }

    #[test]
    fn overlap_allow_fires_while_the_previous_run_still_runs() {
        let created = utc(2025, 1, 1, 10, 0, 0);
        let (mut schedule, spec) = new_schedule("*/10 * * * * *", "UTC", created);
        schedule.overlap = OverlapPolicy::Allow;
        let clock = ManualClock::new(created);
        let decisions = drive(
            &mut schedule,
            &spec,
            &clock,
            created + TimeDelta::seconds(60),
            |_, _| true,
        );
        assert_eq!(fired_at(&decisions).len(), 6);
        assert_eq!(decisions.len(), 6);
    }

    /// An hourly schedule that last fired at 07:00; the master was down from 07:30 to
    /// 10:20, so 08:00, 09:00 and 10:00 passed.
    fn after_three_hours_down(missed: MissedPolicy) -> (Vec<Decision>, Schedule) {
        let (mut schedule, spec) = new_schedule("0 * * * *", "UTC", utc(2025, 1, 1, 0, 0, 0));
        schedule.missed = missed;
        schedule.last_fired_ms = Some(to_ms(utc(2025, 1, 1, 7, 0, 0)));
        let clock = ManualClock::new(utc(2025, 1, 1, 10, 20, 0));
        let decisions = drive(
            &mut schedule,
            &spec,
            &clock,
            utc(2025, 1, 1, 10, 59, 59),
            |_, _| false,
        );
        (decisions, schedule)
    }

    #[test]
    fn after_downtime_missed_fire_times_are_skipped_once_by_default() {
        let (decisions, schedule) = after_three_hours_down(MissedPolicy::default());
        assert_eq!(
            decisions,
            [Decision::SkipMissed {
                count: 3,
                through: utc(2025, 1, 1, 10, 0, 0)
            }]
        );
        assert_eq!(
            schedule.last_outcome.as_deref(),
            Some("skipped 3 fire times missed while the master was down")
        );
        let spec = schedule.spec().unwrap();
        assert_eq!(
            schedule.next_run(&spec, utc(2025, 1, 1, 10, 20, 0)),
            Some(utc(2025, 1, 1, 11, 0, 0))
        );
    }

    #[test]
    fn after_downtime_run_once_fires_once_not_a_burst() {
        let (decisions, schedule) = after_three_hours_down(MissedPolicy::RunOnce);
        assert_eq!(
            decisions,
            [Decision::Fire {
                at: utc(2025, 1, 1, 10, 0, 0),
                splay_delay: Duration::ZERO,
                missed: 2
            }]
        );
        assert_eq!(
            schedule.last_outcome.as_deref(),
            Some("started (2 earlier fire times missed)")
        );
    }

    #[test]
    fn a_fire_time_within_the_grace_fires_even_after_downtime() {
        // Back at 10:00:30: 10:00 is on time, 08:00 and 09:00 are folded into it.
        let (mut schedule, spec) = new_schedule("0 * * * *", "UTC", utc(2025, 1, 1, 0, 0, 0));
        schedule.last_fired_ms = Some(to_ms(utc(2025, 1, 1, 7, 0, 0)));
        let mut rng = StdRng::seed_from_u64(1);
        let now = utc(2025, 1, 1, 10, 0, 30);
        assert_eq!(
            decide(&schedule, &spec, now, false, &mut rng),
            Decision::Fire {
                at: utc(2025, 1, 1, 10, 0, 0),
                splay_delay: Duration::ZERO,
                missed: 2
            }
        );
    }

    #[test]
    fn days_of_missed_per_second_fire_times_are_settled_in_one_step() {
        let mut rng = StdRng::seed_from_u64(1);
        // Every second of every day: the latest fire time is always on time.
        let (mut schedule, spec) = new_schedule("* * * * * *", "UTC", utc(2025, 1, 1, 0, 0, 0));
        let now = utc(2025, 1, 4, 12, 0, 0);
        let decision = decide(&schedule, &spec, now, false, &mut rng);
        assert_eq!(
            decision,
            Decision::Fire {
                at: now,
                splay_delay: Duration::ZERO,
                missed: MISSED_COUNT_LIMIT - 1
            }
        );
        schedule.record(&decision, Some(job_started_at(now)));
        assert_eq!(
            decide(&schedule, &spec, now, false, &mut rng),
            Decision::Wait {
                until: now + TimeDelta::seconds(1)
            }
        );

        // Every second from 00:00 to 00:59: at noon all of today's are missed.
        let (mut schedule, spec) = new_schedule("* * 0 * * *", "UTC", utc(2025, 1, 1, 0, 0, 0));
        let decision = decide(&schedule, &spec, now, false, &mut rng);
        assert_eq!(
            decision,
            Decision::SkipMissed {
                count: MISSED_COUNT_LIMIT,
                through: utc(2025, 1, 4, 0, 59, 59)
            }
        );
        schedule.record(&decision, None);
        assert_eq!(
            decide(&schedule, &spec, now, false, &mut rng),
            Decision::Wait {
                until: utc(2025, 1, 5, 0, 0, 0)
            }
        );
    }

    #[test]
    fn a_paused_schedule_never_fires_and_resumes_without_a_backlog() {
        let created = utc(2025, 1, 1, 0, 0, 0);
        let (mut schedule, spec) = new_schedule("*/5 * * * *", "UTC", created);
        schedule.missed = MissedPolicy::RunOnce;
        schedule.pause();
        let mut rng = StdRng::seed_from_u64(1);
        for minutes in (0..24 * 60).step_by(7) {
            let now = created + TimeDelta::minutes(minutes);
            assert_eq!(
                decide(&schedule, &spec, now, false, &mut rng),
                Decision::Paused
            );
        }
        assert_eq!(schedule.next_run(&spec, created), None);

        let now = utc(2025, 1, 2, 0, 2, 0);
        schedule.resume(now);
        assert_eq!(
            decide(&schedule, &spec, now, false, &mut rng),
            Decision::Wait {
                until: utc(2025, 1, 2, 0, 5, 0)
            }
        );
    }

    #[test]
    fn a_clock_stepped_back_does_not_fire_a_time_twice() {
        let created = utc(2025, 1, 1, 9, 0, 0);
        let (mut schedule, spec) = new_schedule("0 10 * * *", "UTC", created);
        let clock = ManualClock::new(created);
        let fired = drive(
            &mut schedule,
            &spec,
            &clock,
            utc(2025, 1, 1, 10, 30, 0),
            |_, _| false,
        );
        assert_eq!(fired_at(&fired), [utc(2025, 1, 1, 10, 0, 0)]);
        clock.set(utc(2025, 1, 1, 9, 59, 0));
        let again = drive(
            &mut schedule,
            &spec,
            &clock,
            utc(2025, 1, 1, 10, 30, 0),
            |_, _| false,
        );
        assert_eq!(again, []);
    }

    #[test]
    fn splay_delays_stay_below_the_splay_and_repeat_with_the_seed() {
        let created = utc(2025, 1, 1, 10, 0, 0);
        let (mut schedule, spec) = new_schedule("* * * * * *", "UTC", created);
        schedule.splay_ms = Some(2_000);
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (1..=200)
                .map(|s| {
                    let now = created + TimeDelta::seconds(s);
                    match decide(&schedule, &spec, now, false, &mut rng) {
                        Decision::Fire { splay_delay, .. } => splay_delay,
                        other => panic!("expected a firing, got {other:?}"),
                    }
                })
                .collect::<Vec<_>>()
        };
        let delays = draw(42);
        assert!(delays.iter().all(|d| *d < Duration::from_millis(2_000)));
        assert!(delays.iter().any(|d| *d >= Duration::from_millis(1_000)));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(1_000)));
        assert_eq!(delays, draw(42));

        schedule.splay_ms = Some(0);
        let mut rng = StdRng::seed_from_u64(1);
        assert!(matches!(
            decide(
                &schedule,
                &spec,
                created + TimeDelta::seconds(1),
                false,
                &mut rng
            ),
            Decision::Fire {
                splay_delay: Duration::ZERO,
                ..
            }
        ));
    }

    #[test]
    fn a_schedule_name_follows_the_id_grammar() {
        let err =
            Schedule::new("Nightly Backup", "@daily", "UTC", run_spec(), Utc::now()).unwrap_err();
        assert!(matches!(err, ScheduleError::Name(_)), "{err:?}");
        assert!(err.to_string().contains("invalid schedule"), "{err}");
    }

    #[test]
    fn a_stored_schedule_round_trips_and_old_records_get_defaults() {
        let (mut schedule, _) = new_schedule("@hourly", "Europe/Berlin", utc(2025, 1, 1, 0, 0, 0));
        schedule.splay_ms = Some(1_500);
        schedule.last_job = Some(Uuid::now_v7());
        let packed = rmp_serde::to_vec(&schedule).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<Schedule>(&packed).unwrap(),
            schedule
        );
        let json = serde_json::to_value(&schedule).unwrap();
        assert_eq!(json["overlap"], "skip");
        assert_eq!(serde_json::from_value::<Schedule>(json).unwrap(), schedule);

        let mut minimal = serde_json::to_value(&schedule).unwrap();
        let object = minimal.as_object_mut().unwrap();
        for field in [
            "tz",
            "paused",
            "overlap",
            "missed",
            "splay_ms",
            "last_fired_ms",
        ] {
            object.remove(field);
        }
        let read: Schedule = serde_json::from_value(minimal).unwrap();
        assert_eq!(read.tz, "UTC");
        assert_eq!(read.overlap, OverlapPolicy::Skip);
        assert_eq!(read.missed, MissedPolicy::Skip);
    }

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let start = utc(2025, 1, 1, 0, 0, 0);
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now(), utc(2025, 1, 1, 0, 1, 30));
        assert!(SystemClock.now() > start);
    }
}
