//! `dispatch schedule …`: add, list, show, remove, pause, resume and run-now, sent to the
//! master as signed requests. The master's scheduler keeps the schedules and fires them;
//! each firing is an ordinary job whose origin is the schedule's name.
//!
//! Flow: [`plan`] checks the arguments before any I/O — every verb's NAME against the id
//! grammar; for `add` also the zone (`--tz`) and the run options, exactly as `dispatch
//! run` checks them ([`run_spec`]) — so a bad one is exit 2 without a connection. [`run`]
//! sends one request and prints the answer ([`render_answer`]). The cron expression is
//! the master's to check: an invalid one, or one that never fires, comes back with the
//! parser's reason (exit 1), as does a NAME already taken or, for the other verbs, an
//! unknown one.
//!
//! # Times
//!
//! A fire time is shown on the wall clock of the schedule's zone and in UTC:
//! `2026-12-02 02:00 Europe/Berlin (01:00 UTC)`; the UTC part carries its own date when
//! that differs (`2026-12-02 00:30 Europe/Berlin (2026-12-01 23:30 UTC)`), and a UTC
//! schedule shows `2026-12-02 01:00 UTC` alone. Seconds (`02:00:10`) are shown when the
//! expression has a seconds field (6 fields).
//!
//! # Text output (`--out text`, the default)
//!
//! `add` and `show` print the schedule, `add` under the head `added schedule NAME`:
//!
//! ```text
//! schedule backup.db
//!   state:        active
//!   cron:         0 2 * * *
//!   tz:           Europe/Berlin
//!   target:       -G db
//!   command:      pg_dump -Fc 'my app'
//!   shell:        no
//!   overlap:      skip
//!   missed:       skip
//!   splay:        30s
//!   timeout:      30s
//!   ttl:          1h
//!   exec timeout: 1h
//!   batch:        25%
//!   env:          PGUSER=backup
//!   cwd:          /srv
//!   created:      2026-12-01T10:00:00Z
//!   next runs:    2026-12-02 02:00 Europe/Berlin (01:00 UTC)
//!                 2026-12-03 02:00 Europe/Berlin (01:00 UTC)
//!                 2026-12-04 02:00 Europe/Berlin (01:00 UTC)
//!   last run:     -
//!   last job:     -
//!   last outcome: -
//! ```
//!
//! Absent values are `-`; `next runs` is `- (paused)` while paused. `command` is the
//! argv with words quoted for a shell where needed (the shell line as is with
//! `--shell`); `env` is `KEY=VALUE` pairs, quoted the same way, separated by spaces;
//! `last run` is the last fire time settled (fired, or skipped: `last outcome` says
//! which); `last job` the whole id of the last firing's (or run-now's) job.
//!
//! `list` prints a table with the columns NAME, CRON, TZ, TARGET, COMMAND (cut to 40
//! characters), STATE (`active` or `paused`), NEXT RUN and LAST RUN (on the wall clock
//! of the schedule's zone, the TZ column: `2026-12-02 02:00`), LAST JOB (the last 8 hex
//! digits of the job id, which `dispatch job` accepts) and LAST OUTCOME (the master's
//! words: `started`, `started by run-now`, `skipped: the previous run is still
//! running`, …, followed by `; job: 2 succeeded, 1 running` while the job is known);
//! absent values are `-`. No schedules: `no schedules yet (`dispatch schedule add`
//! creates one)`.
//!
//! `remove`, `pause` and `resume` print the master's line: `removed schedule NAME`,
//! `paused schedule NAME`, `resumed schedule NAME`. `run-now` prints the job id alone,
//! as `dispatch run --async` does.
//!
//! # JSON output (`--out json`) and YAML output (`--out yaml`)
//!
//! `list` prints an array of objects, `add` and `show` one object ([`ScheduleRecord`]),
//! all fields always present:
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `name` | string | the schedule's name |
//! | `cron` | string | the cron expression as typed |
//! | `tz` | string | the IANA zone it is read in |
//! | `target` | string | the target as typed (`web.*`, `-G web`, `-L a,b`) |
//! | `command` | array of strings | the argv (one shell line when `shell`) |
//! | `shell` | bool | run through `/bin/sh -c` |
//! | `paused` | bool | paused: it does not fire |
//! | `overlap` | string | `skip` or `allow` |
//! | `missed` | string | `skip` or `run_once` |
//! | `splay_ms` | int or null | each firing starts after a random delay below this |
//! | `next_runs_ms` | array of ints | the next three fire times, Unix milliseconds (empty while paused) |
//! | `last_fired_ms` | int or null | the last fire time settled (fired or skipped) |
//! | `last_job` | string or null | the UUID of the last firing's (or run-now's) job |
//! | `last_outcome` | string or null | what became of the last firing, as the table shows it |
//! | `created_at_ms` | int | when the schedule was added |
//! | `timeout_ms` | int | `--timeout`: how long a firing waits for online minions |
//! | `ttl_ms` | int | `--ttl`: how long the command waits in an offline minion's queue |
//! | `exec_timeout_ms` | int or null | `--exec-timeout` |
//! | `batch` | string or null | `--batch`: `N` or `N%` |
//! | `env` | object | `--env`: variable name to value |
//! | `cwd` | string or null | `--cwd` |
//!
//! `run-now --out json` prints one line `{"job_id": …, "expected": [ids], "offline":
//! [ids]}`, as `dispatch run --async --out json` does.
//!
//! # Exit codes
//!
//! 0 when the master did it; 1 when it refused (the message, on stderr, says why);
//! 2 for usage and connection errors.

use crate::cli::{
    MissedArg, Output, OverlapArg, ScheduleAddArgs, ScheduleCommand, ViewOutput, exit,
};
use crate::client::{MasterClient, Operator};
use crate::render::{self, COMMAND_WIDTH};
use crate::run_cmd::{Verb, run_spec};
use crate::schedule::{ScheduleError, from_ms};
use chrono_tz::Tz;
use dispatch_common::message::Exec;
use dispatch_common::names::check_name;
use dispatch_common::rpc::{
    Batch, JobStarted, MissedPolicy, OverlapPolicy, RequestBody, ResponseBody, ScheduleInfo,
    ScheduleSpec,
};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::borrow::Cow;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use uuid::Uuid;

/// Hex digits of the job id the table shows (a suffix `dispatch job` accepts).
pub const SHORT_ID_DIGITS: usize = crate::history::MIN_ID_DIGITS;

/// A checked `dispatch schedule …` verb: what to ask and how to print the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedulePlan {
    Add {
        spec: Box<ScheduleSpec>,
        out: ViewOutput,
    },
    List {
        out: ViewOutput,
    },
    Show {
        name: String,
        out: ViewOutput,
    },
    Remove {
        name: String,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    RunNow {
        name: String,
        out: Output,
    },
}

impl SchedulePlan {
    /// The request to send.
    pub fn request(&self) -> RequestBody {
        match self {
            SchedulePlan::Add { spec, .. } => RequestBody::AddSchedule(ScheduleSpec::clone(spec)),
            SchedulePlan::List { .. } => RequestBody::Schedules { name: None },
            SchedulePlan::Show { name, .. } => RequestBody::Schedules {
                name: Some(name.clone()),
            },
            SchedulePlan::Remove { name } => RequestBody::RemoveSchedule { name: name.clone() },
            SchedulePlan::Pause { name } => RequestBody::PauseSchedule { name: name.clone() },
            SchedulePlan::Resume { name } => RequestBody::ResumeSchedule { name: name.clone() },
            SchedulePlan::RunNow { name, .. } => RequestBody::RunSchedule { name: name.clone() },
        }
    }
}

/// Why the arguments of `dispatch schedule …` make no request (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A bad NAME or `--tz`.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// A bad target or run option.
    #[error(transparent)]
    Run(#[from] crate::run_cmd::PlanError),
}

/// Checks the arguments (clap already checked the durations, policies and outputs).
pub fn plan(command: ScheduleCommand) -> Result<SchedulePlan, PlanError> {
    let name = |name: String| -> Result<String, PlanError> {
        check_name("schedule", &name).map_err(ScheduleError::from)?;
        Ok(name)
    };
    Ok(match command {
        ScheduleCommand::Add(args) => plan_add(*args)?,
        ScheduleCommand::List { out } => SchedulePlan::List { out },
        ScheduleCommand::Show { name: n, out } => SchedulePlan::Show {
            name: name(n)?,
            out,
        },
        ScheduleCommand::Remove { name: n } => SchedulePlan::Remove { name: name(n)? },
        ScheduleCommand::Pause { name: n } => SchedulePlan::Pause { name: name(n)? },
        ScheduleCommand::Resume { name: n } => SchedulePlan::Resume { name: name(n)? },
        ScheduleCommand::RunNow { name: n, out } => SchedulePlan::RunNow {
            name: name(n)?,
            out,
        },
    })
}

fn plan_add(args: ScheduleAddArgs) -> Result<SchedulePlan, PlanError> {
    check_name("schedule", &args.name).map_err(ScheduleError::from)?;
    args.tz
        .parse::<Tz>()
        .map_err(|e: chrono_tz::ParseError| ScheduleError::Zone {
            tz: args.tz.clone(),
            reason: e.to_string(),
        })?;
    let run = run_spec(Verb::ScheduleAdd, args.options)?;
    let spec = ScheduleSpec {
        name: args.name,
        cron: args.cron,
        tz: args.tz,
        run,
        overlap: match args.overlap {
            OverlapArg::Skip => OverlapPolicy::Skip,
            OverlapArg::Allow => OverlapPolicy::Allow,
        },
        missed: match args.missed {
            MissedArg::Skip => MissedPolicy::Skip,
            MissedArg::RunOnce => MissedPolicy::RunOnce,
        },
        // `--splay 0s` is no splay.
        splay_ms: args
            .splay
            .map(|splay| u64::try_from(splay.as_millis()).unwrap_or(u64::MAX))
            .filter(|ms| *ms > 0),
    };
    Ok(SchedulePlan::Add {
        spec: Box::new(spec),
        out: args.out,
    })
}

/// Sends the plan's request to the master at `url` and prints the answer.
pub async fn run(url: &str, operator: Operator, plan: SchedulePlan) -> anyhow::Result<ExitCode> {
    let mut client = MasterClient::connect(url, operator).await?;
    let answer = client.call(plan.request()).await;
    client.close().await;
    let printed = render_answer(&plan, answer?)?;
    if !printed.stdout.is_empty() {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(printed.stdout.as_bytes())?;
        stdout.flush()?;
    }
    if !printed.stderr.is_empty() {
        eprint!("{}", printed.stderr);
    }
    Ok(ExitCode::from(printed.code))
}

/// What a verb prints for an answer, and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Printed {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

impl Printed {
    fn ok(stdout: String) -> Self {
        Self {
            stdout,
            stderr: String::new(),
            code: exit::OK,
        }
    }

    fn refused(reason: &str) -> Self {
        Self {
            stdout: String::new(),
            stderr: format!("dispatch: {reason}\n"),
            code: exit::FAILED,
        }
    }
}

/// The output of `plan`'s verb for the master's `answer`; an answer the verb does not
/// expect is an error (exit 2).
pub fn render_answer(plan: &SchedulePlan, answer: ResponseBody) -> anyhow::Result<Printed> {
    let unexpected =
        |answer: &ResponseBody| anyhow::anyhow!("unexpected answer from the master: {answer:?}");
    Ok(match (plan, answer) {
        (_, ResponseBody::Error(reason)) => Printed::refused(&reason),
        (SchedulePlan::Add { out, spec }, ResponseBody::Schedules(infos)) => {
            match infos.iter().find(|info| info.spec.name == spec.name) {
                Some(info) => Printed::ok(one(info, *out, "added schedule")?),
                None => return Err(unexpected(&ResponseBody::Schedules(infos))),
            }
        }
        (SchedulePlan::List { out }, ResponseBody::Schedules(infos)) => Printed::ok(match out {
            ViewOutput::Text => schedule_table(&infos),
            ViewOutput::Json => serde_json::to_string_pretty(&records(&infos))? + "\n",
            ViewOutput::Yaml => serde_yaml_ng::to_string(&records(&infos))?,
        }),
        (SchedulePlan::Show { name, out }, ResponseBody::Schedules(infos)) => {
            match infos.iter().find(|info| &info.spec.name == name) {
                Some(info) => Printed::ok(one(info, *out, "schedule")?),
                None => Printed::refused(&format!(
                    "no schedule '{name}'; `dispatch schedule list` shows them"
                )),
            }
        }
        (
            SchedulePlan::Remove { .. } | SchedulePlan::Pause { .. } | SchedulePlan::Resume { .. },
            ResponseBody::Done(lines),
        ) => Printed::ok(lines.iter().map(|line| format!("{line}\n")).collect()),
        (SchedulePlan::RunNow { out, .. }, ResponseBody::Started(started)) => {
            Printed::ok(started_text(*out, &started)?)
        }
        (_, other) => return Err(unexpected(&other)),
    })
}

/// One schedule as `add` and `show` print it; `head` starts the text form.
fn one(info: &ScheduleInfo, out: ViewOutput, head: &str) -> anyhow::Result<String> {
    Ok(match out {
        ViewOutput::Text => describe(info, head),
        ViewOutput::Json => serde_json::to_string_pretty(&ScheduleRecord::of(info))? + "\n",
        ViewOutput::Yaml => serde_yaml_ng::to_string(&ScheduleRecord::of(info))?,
    })
}

/// The `run-now` answer: the job id alone, or an object for JSON.
fn started_text(out: Output, started: &JobStarted) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Detached<'a> {
        job_id: Uuid,
        expected: &'a [String],
        offline: &'a [String],
    }
    Ok(match out {
        Output::Text => format!("{}\n", started.job_id),
        Output::Json => {
            let detached = Detached {
                job_id: started.job_id,
                expected: &started.expected,
                offline: &started.offline,
            };
            serde_json::to_string(&detached)? + "\n"
        }
    })
}

/// Column labels of [`describe`], padded to the longest (`exec timeout:`).
const LABEL_WIDTH: usize = 14;

/// One schedule as a report (see the module doc), under `head NAME`.
pub fn describe(info: &ScheduleInfo, head: &str) -> String {
    let spec = &info.spec;
    let run = &spec.run;
    let seconds = has_seconds(&spec.cron);
    let mut text = format!("{head} {}\n", spec.name);
    let mut field = |label: &str, value: &str| {
        text += &format!("  {:<LABEL_WIDTH$}{value}\n", format!("{label}:"));
    };
    let dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    let ms = |ms: u64| render::duration(Duration::from_millis(ms));
    field("state", state(info.paused));
    field("cron", &spec.cron);
    field("tz", &spec.tz);
    field("target", &run.target.to_string());
    field("command", &command_line(&run.exec));
    field("shell", if run.exec.shell { "yes" } else { "no" });
    field("overlap", overlap_name(spec.overlap));
    field("missed", missed_name(spec.missed));
    field("splay", &dash(spec.splay_ms.map(ms)));
    field("timeout", &ms(run.wait_ms));
    field("ttl", &ms(run.ttl_ms));
    field("exec timeout", &dash(run.exec.timeout_ms.map(ms)));
    field("batch", &dash(run.batch.map(batch_text)));
    let env: Vec<String> = run
        .exec
        .env
        .iter()
        .map(|(key, value)| quote(&format!("{key}={value}")).into_owned())
        .collect();
    field("env", &dash((!env.is_empty()).then(|| env.join(" "))));
    field("cwd", &dash(run.exec.cwd.clone()));
    field("created", &render::time(info.created_at_ms));
    let next: Vec<String> = info
        .next_runs_ms
        .iter()
        .map(|ms| fire_time(*ms, &spec.tz, seconds))
        .collect();
    let next = match (next.is_empty(), info.paused) {
        (false, _) => next.join(&format!("\n  {:LABEL_WIDTH$}", "")),
        (true, true) => "- (paused)".to_owned(),
        (true, false) => "-".to_owned(),
    };
    field("next runs", &next);
    field(
        "last run",
        &dash(
            info.last_fired_ms
                .map(|ms| fire_time(ms, &spec.tz, seconds)),
        ),
    );
    field("last job", &dash(info.last_job.map(|id| id.to_string())));
    field("last outcome", &dash(info.last_outcome.clone()));
    text
}

/// The schedules as an aligned table (see the module doc).
pub fn schedule_table(infos: &[ScheduleInfo]) -> String {
    if infos.is_empty() {
        return "no schedules yet (`dispatch schedule add` creates one)\n".to_owned();
    }
    let dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    let rows: Vec<[String; 10]> = infos
        .iter()
        .map(|info| {
            let spec = &info.spec;
            let seconds = has_seconds(&spec.cron);
            let wall = |ms: &u64| wall_time(*ms, &spec.tz, seconds);
            [
                spec.name.clone(),
                render::cut(&spec.cron, COMMAND_WIDTH),
                spec.tz.clone(),
                spec.run.target.to_string(),
                render::cut(&command_line(&spec.run.exec), COMMAND_WIDTH),
                state(info.paused).to_owned(),
                dash(info.next_runs_ms.first().map(wall)),
                dash(info.last_fired_ms.as_ref().map(wall)),
                dash(info.last_job.map(short_id)),
                dash(info.last_outcome.as_deref().map(|o| render::cut(o, 80))),
            ]
        })
        .collect();
    render::table(
        [
            "NAME",
            "CRON",
            "TZ",
            "TARGET",
            "COMMAND",
            "STATE",
            "NEXT RUN",
            "LAST RUN",
            "LAST JOB",
            "LAST OUTCOME",
        ],
        &rows,
    )
}

fn state(paused: bool) -> &'static str {
    if paused { "paused" } else { "active" }
}

fn overlap_name(overlap: OverlapPolicy) -> &'static str {
    match overlap {
        OverlapPolicy::Skip => "skip",
        OverlapPolicy::Allow => "allow",
    }
}

/// As `--missed` takes it.
fn missed_name(missed: MissedPolicy) -> &'static str {
    match missed {
        MissedPolicy::Skip => "skip",
        MissedPolicy::RunOnce => "run-once",
    }
}

/// As `--batch` takes it: `N` or `N%`.
fn batch_text(batch: Batch) -> String {
    match batch {
        Batch::Count(n) => n.to_string(),
        Batch::Percent(p) => format!("{p}%"),
    }
}

/// The last [`SHORT_ID_DIGITS`] hex digits of a job id: a suffix `dispatch job` accepts
/// (the first digits of a UUIDv7 are a timestamp, alike for jobs a minute apart).
pub fn short_id(id: Uuid) -> String {
    let hex = id.simple().to_string();
    hex[hex.len() - SHORT_ID_DIGITS..].to_owned()
}

/// Whether the expression has a seconds field (6 fields), so times show seconds.
fn has_seconds(cron: &str) -> bool {
    cron.split_whitespace().count() >= 6
}

/// The zone named `tz` (UTC for a name that does not parse, which the master never
/// stores).
fn zone(tz: &str) -> Tz {
    tz.parse().unwrap_or(Tz::UTC)
}

fn time_format(seconds: bool) -> &'static str {
    if seconds { "%H:%M:%S" } else { "%H:%M" }
}

/// `ms` on the wall clock of the zone `tz`: `2026-12-02 02:00`.
pub fn wall_time(ms: u64, tz: &str, seconds: bool) -> String {
    let local = from_ms(ms).with_timezone(&zone(tz));
    format!(
        "{} {}",
        local.format("%Y-%m-%d"),
        local.format(time_format(seconds))
    )
}

/// `ms` in the zone `tz` and in UTC: `2026-12-02 02:00 Europe/Berlin (01:00 UTC)`, the
/// UTC date given when it differs; `2026-12-02 01:00 UTC` for a UTC schedule.
pub fn fire_time(ms: u64, tz: &str, seconds: bool) -> String {
    let zone = zone(tz);
    let at = from_ms(ms);
    let local = wall_time(ms, tz, seconds);
    if zone == Tz::UTC {
        return format!("{local} UTC");
    }
    let time = at.format(time_format(seconds));
    let utc = if at.with_timezone(&zone).date_naive() == at.date_naive() {
        time.to_string()
    } else {
        format!("{} {time}", at.format("%Y-%m-%d"))
    };
    format!("{local} {tz} ({utc} UTC)")
}

/// The command as one line: the shell line as is, or the argv with each word quoted for
/// a shell where needed (`ls -la 'my dir'`).
pub fn command_line(exec: &Exec) -> String {
    if exec.shell {
        return exec.argv.join(" ");
    }
    let words: Vec<Cow<'_, str>> = exec.argv.iter().map(|word| quote(word)).collect();
    words.join(" ")
}

/// `word` as a shell reads it back: as is when it holds only safe characters, else in
/// single quotes.
fn quote(word: &str) -> Cow<'_, str> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./=:,@%+".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

/// The JSON (and YAML) objects of `list`.
pub fn records(infos: &[ScheduleInfo]) -> Vec<ScheduleRecord<'_>> {
    infos.iter().map(ScheduleRecord::of).collect()
}

/// One schedule of `--out json` (fields in the module doc, never renamed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleRecord<'a> {
    pub name: &'a str,
    pub cron: &'a str,
    pub tz: &'a str,
    pub target: String,
    pub command: &'a [String],
    pub shell: bool,
    pub paused: bool,
    pub overlap: OverlapPolicy,
    pub missed: MissedPolicy,
    pub splay_ms: Option<u64>,
    pub next_runs_ms: &'a [u64],
    pub last_fired_ms: Option<u64>,
    pub last_job: Option<Uuid>,
    pub last_outcome: Option<&'a str>,
    pub created_at_ms: u64,
    pub timeout_ms: u64,
    pub ttl_ms: u64,
    pub exec_timeout_ms: Option<u64>,
    pub batch: Option<String>,
    pub env: Env<'a>,
    pub cwd: Option<&'a str>,
}

impl<'a> ScheduleRecord<'a> {
    pub fn of(info: &'a ScheduleInfo) -> Self {
        let spec = &info.spec;
        let run = &spec.run;
        Self {
            name: &spec.name,
            cron: &spec.cron,
            tz: &spec.tz,
            target: run.target.to_string(),
            command: &run.exec.argv,
            shell: run.exec.shell,
            paused: info.paused,
            overlap: spec.overlap,
            missed: spec.missed,
            splay_ms: spec.splay_ms,
            next_runs_ms: &info.next_runs_ms,
            last_fired_ms: info.last_fired_ms,
            last_job: info.last_job,
            last_outcome: info.last_outcome.as_deref(),
            created_at_ms: info.created_at_ms,
            timeout_ms: run.wait_ms,
            ttl_ms: run.ttl_ms,
            exec_timeout_ms: run.exec.timeout_ms,
            batch: run.batch.map(batch_text),
            env: Env(&run.exec.env),
            cwd: run.exec.cwd.as_deref(),
        }
    }
}

/// `--env` pairs as an object `{"KEY": "VALUE"}`, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Env<'a>(pub &'a [(String, String)]);

impl Serialize for Env<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use dispatch_common::target::Target;

    const JOB: Uuid = Uuid::from_u128(0x0190_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b);
    /// 2026-12-02T01:00:00Z: 02:00 in Berlin (CET, +1).
    const DEC2_0100Z: u64 = 1_796_173_200_000;
    const DAY: u64 = 86_400_000;

    fn parse(words: &[&str]) -> Result<SchedulePlan, String> {
        let cli = Cli::try_parse_from(["dispatch", "schedule"].iter().chain(words))
            .map_err(|e| e.to_string())?;
        match cli.command {
            Command::Schedule(verb) => plan(verb).map_err(|e| e.to_string()),
            other => panic!("not a schedule verb: {other:?}"),
        }
    }

    fn add(words: &[&str]) -> Result<ScheduleSpec, String> {
        let all: Vec<&str> = ["add"].iter().chain(words).copied().collect();
        match parse(&all)? {
            SchedulePlan::Add { spec, .. } => Ok(*spec),
            other => panic!("not an add: {other:?}"),
        }
    }

    fn info(spec: ScheduleSpec) -> ScheduleInfo {
        ScheduleInfo {
            spec,
            paused: false,
            created_at_ms: DEC2_0100Z - DAY,
            next_runs_ms: vec![DEC2_0100Z, DEC2_0100Z + DAY, DEC2_0100Z + 2 * DAY],
            last_fired_ms: None,
            last_job: None,
            last_outcome: None,
        }
    }

    fn backup() -> ScheduleInfo {
        info(
            add(&[
                "backup.db",
                "--cron",
                "0 2 * * *",
                "--tz",
                "Europe/Berlin",
                "-G",
                "db",
                "--",
                "pg_dump",
                "-Fc",
                "my app",
            ])
            .unwrap(),
        )
    }

    #[test]
    fn add_takes_the_run_options_as_dispatch_run_does() {
        let spec = add(&[
            "nightly",
            "--cron",
            "0 2 * * *",
            "--timeout",
            "5s",
            "--ttl",
            "10m",
            "--exec-timeout",
            "2m",
            "--shell",
            "--env",
            "A=1",
            "--cwd",
            "/srv",
            "--batch",
            "25%",
            "db.#",
            "echo $A | wc -c",
            "--timeout",
        ])
        .unwrap();
        let run = &spec.run;
        assert_eq!(run.target, Target::Pattern("db.#".into()));
        assert_eq!(run.exec.argv, ["echo $A | wc -c", "--timeout"]);
        assert_eq!(
            (run.wait_ms, run.ttl_ms, run.exec.timeout_ms),
            (5_000, 600_000, Some(120_000))
        );
        assert!(run.exec.shell && !run.detach);
        assert_eq!(run.exec.env, [("A".into(), "1".into())]);
        assert_eq!(run.exec.cwd.as_deref(), Some("/srv"));
        assert_eq!(run.batch, Some(Batch::Percent(25)));
    }

    #[test]
    fn add_defaults_are_utc_skip_skip_no_splay_and_the_run_defaults() {
        let spec = add(&["health", "--cron", "*/5 * * * *", "-L", "a,b", "uptime"]).unwrap();
        assert_eq!(spec.name, "health");
        assert_eq!(spec.cron, "*/5 * * * *");
        assert_eq!(spec.tz, "UTC");
        assert_eq!(
            (spec.overlap, spec.missed, spec.splay_ms),
            (OverlapPolicy::Skip, MissedPolicy::Skip, None)
        );
        assert_eq!(spec.run.target, Target::List(vec!["a".into(), "b".into()]));
        assert_eq!(spec.run.exec.argv, ["uptime"]);
        assert_eq!(
            (spec.run.wait_ms, spec.run.ttl_ms, spec.run.exec.timeout_ms),
            (30_000, 3_600_000, Some(3_600_000))
        );
    }

    #[test]
    fn add_takes_the_policies_and_splay_and_options_after_the_name() {
        let spec = add(&[
            "--overlap",
            "allow",
            "sweep",
            "--missed",
            "run-once",
            "--splay",
            "30s",
            "--cron",
            "@hourly",
            "*",
            "true",
        ])
        .unwrap();
        assert_eq!(spec.name, "sweep");
        assert_eq!(
            (spec.overlap, spec.missed, spec.splay_ms),
            (OverlapPolicy::Allow, MissedPolicy::RunOnce, Some(30_000))
        );
        let spec = add(&["s", "--cron", "@daily", "--splay", "0s", "*", "true"]).unwrap();
        assert_eq!(spec.splay_ms, None);
    }

    #[test]
    fn add_refuses_bad_names_zones_targets_and_options_before_connecting() {
        let error = add(&["Nightly", "--cron", "@daily", "*", "true"]).unwrap_err();
        assert!(error.starts_with("invalid schedule 'Nightly'"), "{error}");
        let error =
            add(&["n", "--cron", "@daily", "--tz", "Mars/Olympus", "*", "true"]).unwrap_err();
        assert!(
            error.starts_with("unknown time zone 'Mars/Olympus'"),
            "{error}"
        );
        let error = add(&["n", "--cron", "@daily", "web*", "true"]).unwrap_err();
        assert!(error.starts_with("invalid target 'web*'"), "{error}");
        let error = add(&["n", "--cron", "@daily", "--bogus", "*", "true"]).unwrap_err();
        assert!(
            error.starts_with("unknown option '--bogus' for `dispatch schedule add`"),
            "{error}"
        );
        let error = add(&["n", "--cron", "@daily", "uptime"]).unwrap_err();
        assert!(
            error.starts_with("no command to run after the target 'uptime'"),
            "{error}"
        );
        assert!(
            error.contains("dispatch schedule add NAME --cron EXPR"),
            "{error}"
        );
        for bad in [
            &["n", "*", "true"][..],
            &["n", "--cron", "@daily"],
            &["n", "--cron", "@daily", "--overlap", "never", "*", "true"],
            &["n", "--cron", "@daily", "--missed", "all", "*", "true"],
            &["n", "--cron", "@daily", "--splay", "soon", "*", "true"],
            &["n", "--cron", "@daily", "--timeout", "0s", "*", "true"],
            &["n", "--cron", "@daily", "--cwd", "srv", "*", "true"],
            &["n", "--cron", "@daily", "-G", "web", "-L", "a", "true"],
        ] {
            assert!(add(bad).is_err(), "{bad:?}");
        }
        // The expression is the master's to check.
        assert!(add(&["n", "--cron", "every day", "*", "true"]).is_ok());
    }

    #[test]
    fn the_other_verbs_check_the_name_and_ask_for_it() {
        let cases: [(&[&str], RequestBody); 6] = [
            (&["list"], RequestBody::Schedules { name: None }),
            (
                &["show", "a.b"],
                RequestBody::Schedules {
                    name: Some("a.b".into()),
                },
            ),
            (
                &["remove", "a"],
                RequestBody::RemoveSchedule { name: "a".into() },
            ),
            (
                &["pause", "a"],
                RequestBody::PauseSchedule { name: "a".into() },
            ),
            (
                &["resume", "a"],
                RequestBody::ResumeSchedule { name: "a".into() },
            ),
            (
                &["run-now", "a"],
                RequestBody::RunSchedule { name: "a".into() },
            ),
        ];
        for (words, request) in cases {
            assert_eq!(parse(words).unwrap().request(), request, "{words:?}");
        }
        for verb in ["show", "remove", "pause", "resume", "run-now"] {
            let error = parse(&[verb, "a/b"]).unwrap_err();
            assert!(
                error.starts_with("invalid schedule 'a/b'"),
                "{verb}: {error}"
            );
            assert!(parse(&[verb]).is_err(), "{verb}");
        }
        assert_eq!(
            parse(&["list", "--out", "json"]).unwrap(),
            SchedulePlan::List {
                out: ViewOutput::Json
            }
        );
        assert!(parse(&["run-now", "a", "--out", "yaml"]).is_err());
    }

    #[test]
    fn fire_times_show_the_zone_and_utc() {
        assert_eq!(
            fire_time(DEC2_0100Z, "Europe/Berlin", false),
            "2026-12-02 02:00 Europe/Berlin (01:00 UTC)"
        );
        assert_eq!(fire_time(DEC2_0100Z, "UTC", false), "2026-12-02 01:00 UTC");
        assert_eq!(
            fire_time(DEC2_0100Z + 10_000, "UTC", true),
            "2026-12-02 01:00:10 UTC"
        );
        // 00:30 in Berlin is still the day before in UTC; 20:00 in New York the day after.
        assert_eq!(
            fire_time(DEC2_0100Z - 5_400_000, "Europe/Berlin", false),
            "2026-12-02 00:30 Europe/Berlin (2026-12-01 23:30 UTC)"
        );
        assert_eq!(
            fire_time(DEC2_0100Z, "America/New_York", false),
            "2026-12-01 20:00 America/New_York (2026-12-02 01:00 UTC)"
        );
        assert_eq!(
            wall_time(DEC2_0100Z, "Europe/Berlin", false),
            "2026-12-02 02:00"
        );
    }

    #[test]
    fn show_prints_every_field_and_the_next_three_fire_times() {
        let mut info = backup();
        info.spec.splay_ms = Some(30_000);
        info.spec.run.exec.env = vec![("PGUSER".into(), "backup".into())];
        info.last_fired_ms = Some(DEC2_0100Z - DAY);
        info.last_job = Some(JOB);
        info.last_outcome = Some("started; job: 2 succeeded".into());
        assert_eq!(
            describe(&info, "schedule"),
            "schedule backup.db\n\
             \x20 state:        active\n\
             \x20 cron:         0 2 * * *\n\
             \x20 tz:           Europe/Berlin\n\
             \x20 target:       -G db\n\
             \x20 command:      pg_dump -Fc 'my app'\n\
             \x20 shell:        no\n\
             \x20 overlap:      skip\n\
             \x20 missed:       skip\n\
             \x20 splay:        30s\n\
             \x20 timeout:      30s\n\
             \x20 ttl:          1h\n\
             \x20 exec timeout: 1h\n\
             \x20 batch:        -\n\
             \x20 env:          PGUSER=backup\n\
             \x20 cwd:          -\n\
             \x20 created:      2026-12-01T01:00:00Z\n\
             \x20 next runs:    2026-12-02 02:00 Europe/Berlin (01:00 UTC)\n\
             \x20               2026-12-03 02:00 Europe/Berlin (01:00 UTC)\n\
             \x20               2026-12-04 02:00 Europe/Berlin (01:00 UTC)\n\
             \x20 last run:     2026-12-01 02:00 Europe/Berlin (01:00 UTC)\n\
             \x20 last job:     0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\n\
             \x20 last outcome: started; job: 2 succeeded\n"
        );
    }

    #[test]
    fn a_paused_schedule_has_no_next_runs() {
        let mut info = backup();
        info.paused = true;
        info.next_runs_ms.clear();
        let text = describe(&info, "schedule");
        assert!(text.contains("\n  state:        paused\n"), "{text}");
        assert!(text.contains("\n  next runs:    - (paused)\n"), "{text}");
    }

    #[test]
    fn list_is_a_table_with_zone_times_and_short_job_ids() {
        let mut paused = info(
            add(&[
                "health",
                "--cron",
                "*/10 * * * * *",
                "--shell",
                "*",
                "curl -fsS x\ny",
            ])
            .unwrap(),
        );
        paused.paused = true;
        paused.next_runs_ms.clear();
        paused.last_fired_ms = Some(DEC2_0100Z + 10_000);
        paused.last_job = Some(JOB);
        paused.last_outcome = Some("skipped: the previous run is still running".into());
        let table = schedule_table(&[backup(), paused]);
        assert_eq!(
            table,
            "NAME       CRON            TZ             TARGET  COMMAND               STATE   \
             NEXT RUN          LAST RUN             LAST JOB  LAST OUTCOME\n\
             backup.db  0 2 * * *       Europe/Berlin  -G db   pg_dump -Fc 'my app'  active  \
             2026-12-02 02:00  -                    -         -\n\
             health     */10 * * * * *  UTC            *       curl -fsS x y         paused  \
             -                 2026-12-02 01:00:10  2e3f4a5b  skipped: the previous run is \
             still running\n"
        );
        assert_eq!(
            schedule_table(&[]),
            "no schedules yet (`dispatch schedule add` creates one)\n"
        );
    }

    #[test]
    fn short_ids_are_suffixes_dispatch_job_accepts() {
        assert_eq!(short_id(JOB), "2e3f4a5b");
    }

    #[test]
    fn commands_are_quoted_for_a_shell_unless_they_are_a_shell_line() {
        let exec = |argv: &[&str], shell| Exec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            shell,
            env: vec![],
            cwd: None,
            timeout_ms: None,
        };
        assert_eq!(
            command_line(&exec(&["ls", "-la", "/tmp/a b", "it's", ""], false)),
            r"ls -la '/tmp/a b' 'it'\''s' ''"
        );
        assert_eq!(
            command_line(&exec(&["df -h | grep /"], true)),
            "df -h | grep /"
        );
    }

    #[test]
    fn json_has_the_documented_fields() {
        let mut info = backup();
        info.spec.run.exec.env = vec![("B".into(), "2".into()), ("A".into(), "1".into())];
        info.spec.run.batch = Some(Batch::Count(2));
        info.last_job = Some(JOB);
        let json = serde_json::to_value(ScheduleRecord::of(&info)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "backup.db",
                "cron": "0 2 * * *",
                "tz": "Europe/Berlin",
                "target": "-G db",
                "command": ["pg_dump", "-Fc", "my app"],
                "shell": false,
                "paused": false,
                "overlap": "skip",
                "missed": "skip",
                "splay_ms": null,
                "next_runs_ms": [DEC2_0100Z, DEC2_0100Z + DAY, DEC2_0100Z + 2 * DAY],
                "last_fired_ms": null,
                "last_job": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                "last_outcome": null,
                "created_at_ms": DEC2_0100Z - DAY,
                "timeout_ms": 30_000,
                "ttl_ms": 3_600_000,
                "exec_timeout_ms": 3_600_000,
                "batch": "2",
                "env": {"B": "2", "A": "1"},
                "cwd": null,
            })
        );
        let text = serde_json::to_string(&Env(&info.spec.run.exec.env)).unwrap();
        assert_eq!(text, r#"{"B":"2","A":"1"}"#);
        let mut once = info.clone();
        once.spec.missed = MissedPolicy::RunOnce;
        once.spec.overlap = OverlapPolicy::Allow;
        let json = serde_json::to_value(records(&[once])).unwrap();
        assert_eq!(
            (&json[0]["missed"], &json[0]["overlap"]),
            (&"run_once".into(), &"allow".into())
        );
    }

    #[test]
    fn answers_render_per_verb_with_exit_codes() {
        let show = |out| SchedulePlan::Show {
            name: "backup.db".into(),
            out,
        };
        let printed = render_answer(
            &show(ViewOutput::Text),
            ResponseBody::Schedules(vec![backup()]),
        )
        .unwrap();
        assert!(
            printed.stdout.starts_with("schedule backup.db\n"),
            "{printed:?}"
        );
        assert_eq!(printed.code, 0);
        let printed = render_answer(
            &show(ViewOutput::Yaml),
            ResponseBody::Schedules(vec![backup()]),
        )
        .unwrap();
        assert!(
            printed.stdout.starts_with("name: backup.db\n"),
            "{printed:?}"
        );
        let added = SchedulePlan::Add {
            spec: Box::new(backup().spec),
            out: ViewOutput::Text,
        };
        let printed = render_answer(&added, ResponseBody::Schedules(vec![backup()])).unwrap();
        assert!(
            printed
                .stdout
                .starts_with("added schedule backup.db\n  state:        active\n"),
            "{printed:?}"
        );
        assert!(printed.stdout.contains("(01:00 UTC)\n"), "{printed:?}");
        let refused = render_answer(
            &added,
            ResponseBody::Error("invalid cron expression 'x': bad".into()),
        )
        .unwrap();
        assert_eq!(
            refused,
            Printed {
                stdout: String::new(),
                stderr: "dispatch: invalid cron expression 'x': bad\n".into(),
                code: 1,
            }
        );
        let list = SchedulePlan::List {
            out: ViewOutput::Json,
        };
        let printed = render_answer(&list, ResponseBody::Schedules(vec![backup()])).unwrap();
        let json: serde_json::Value = serde_json::from_str(&printed.stdout).unwrap();
        assert_eq!(json[0]["name"], "backup.db");
        let printed = render_answer(&list, ResponseBody::Schedules(vec![])).unwrap();
        assert_eq!(printed.stdout, "[]\n");
        let pause = SchedulePlan::Pause { name: "a".into() };
        let printed =
            render_answer(&pause, ResponseBody::Done(vec!["paused schedule a".into()])).unwrap();
        assert_eq!(printed, Printed::ok("paused schedule a\n".into()));
        let unknown = ResponseBody::Error("no schedule 'a'".into());
        assert_eq!(render_answer(&pause, unknown).unwrap().code, 1);
        assert!(render_answer(&pause, ResponseBody::Schedules(vec![])).is_err());
    }

    #[test]
    fn run_now_prints_the_job_id_like_run_async() {
        let started = ResponseBody::Started(JobStarted {
            job_id: JOB,
            expected: vec!["a".into(), "b".into()],
            offline: vec!["b".into()],
        });
        let plan = |out| SchedulePlan::RunNow {
            name: "a".into(),
            out,
        };
        let printed = render_answer(&plan(Output::Text), started.clone()).unwrap();
        assert_eq!(printed, Printed::ok(format!("{JOB}\n")));
        let printed = render_answer(&plan(Output::Json), started).unwrap();
        assert_eq!(
            printed.stdout,
            format!("{{\"job_id\":\"{JOB}\",\"expected\":[\"a\",\"b\"],\"offline\":[\"b\"]}}\n")
        );
    }
}
