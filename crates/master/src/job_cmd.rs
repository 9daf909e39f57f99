//! `dispatch job JID`: one job from the master's job store, with every expected minion's
//! state and output.
//!
//! Flow: [`plan`] checks the id's shape before any I/O; [`run`] sends
//! [`RequestBody::Job`] and prints the [`ResponseBody::Job`] answer. The master resolves
//! the id (whole, or an unambiguous prefix or suffix of 8+ hex digits); an unknown or
//! ambiguous one comes back as an error naming the matches (exit 1). With `--wait` the
//! master answers once every expected minion has returned or expired, or when
//! `--timeout` (default 5m) passes; the CLI waits that long plus
//! [`ANSWER_SLACK`] for the answer.
//!
//! # Text output (`--out text`, the default)
//!
//! A header, then each expected minion under its id and state — a return as `dispatch
//! run` prints it ([`outcome_text`]), a minion without one with why — then one line of
//! counts per state:
//!
//! ```text
//! job 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b
//!   submitted: 2024-05-01T12:00:00Z by operator.local
//!   origin:    cli
//!   target:    web.*
//!   command:   ls -la /tmp
//!   ttl:       1h (a queued command expires at 2024-05-01T13:00:00Z)
//!
//! web.01: succeeded (returned at 2024-05-01T12:00:01Z)
//!     hello
//! web.02: queued (offline when published; the command waits in its queue until 2024-05-01T13:00:00Z)
//!
//! job 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b: 2 minions: 1 succeeded, 1 queued
//!   not every minion has returned: `dispatch job 0190a1b2-… --wait` waits for them
//! ```
//!
//! # JSON output (`--out json`) and YAML output (`--out yaml`)
//!
//! One object ([`JobReport`]):
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `job_id` | string | the job's UUID |
//! | `submitted_by` | string | the operator who submitted it |
//! | `submitted_at_ms` | int | when, in Unix milliseconds |
//! | `origin` | string | `cli`, or the name of the schedule that fired it |
//! | `target` | string | the target as typed (`web.*`, `-G web`, `-L a,b`) |
//! | `command` | array of strings | the argv (one shell line when `shell`) |
//! | `shell` | bool | run through `/bin/sh -c` |
//! | `env` | array of [name, value] | environment given to the command |
//! | `cwd` | string or null | its working directory |
//! | `timeout_ms` | int | how long `dispatch run` waited for online minions (`--timeout`) |
//! | `exec_timeout_ms` | int or null | how long the command may run (`--exec-timeout`) |
//! | `ttl_ms` | int | how long the command may wait in an offline minion's queue |
//! | `expires_at_ms` | int | when a queued command expires, in Unix milliseconds |
//! | `minions` | array | one object per expected minion, below |
//!
//! Each minion object has the fields `dispatch run --out json` prints
//! ([`MinionRecord`]: `minion`, `job_id`, `status`, `exit_code`, `signal`, `stdout`,
//! `stdout_lossy`, `stdout_truncated`, `stderr`, `stderr_lossy`, `stderr_truncated`,
//! `duration_ms`, `exec_timed_out`, `error`, `reason`), except that `status` is the
//! minion's state in the job — `succeeded`, `failed`, `refused`, `interrupted`,
//! `running`, `timed_out`, `queued` or `expired` — plus `arrived_at_ms` (int or null:
//! when its return was recorded).
//!
//! # Exit codes
//!
//! [`exit_code_for`], as `dispatch run`: 3 if a minion has not returned (running,
//! timed_out, queued, expired), else 1 if one failed, refused or was interrupted, else 0.
//! 1 also for an unknown or ambiguous id; 2 for usage and connection errors.

use crate::cli::{JobArgs, ViewOutput, exit};
use crate::client::{MasterClient, Operator, RPC_TIMEOUT};
use crate::history::MIN_ID_DIGITS;
use crate::render;
use crate::returns::{MinionRecord, outcome_text};
use crate::run_cmd::ANSWER_SLACK;
use dispatch_common::rpc::{JobView, MinionReturn, MinionState, RequestBody, ResponseBody};
use serde::Serialize;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use uuid::Uuid;

/// A checked `dispatch job`: what to ask and how to print the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPlan {
    /// The id as typed (the master resolves prefixes and suffixes).
    pub id: String,
    /// `--wait`: how long the master may hold the answer.
    pub wait: Option<Duration>,
    pub out: ViewOutput,
}

impl JobPlan {
    /// The request to send.
    pub fn request(&self) -> RequestBody {
        RequestBody::Job {
            id: self.id.clone(),
            wait_ms: self
                .wait
                .map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// How long to wait for the answer: the master's wait plus [`ANSWER_SLACK`].
    pub fn answer_wait(&self) -> Duration {
        self.wait.map_or(RPC_TIMEOUT, |wait| wait + ANSWER_SLACK)
    }
}

/// Why the arguments of `dispatch job` make no request (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "'{0}' is not a job id: give the whole id or at least {MIN_ID_DIGITS} hex digits \
         of its start or end (`dispatch jobs` lists them)"
    )]
    NotAnId(String),
}

/// Checks the id's shape (hex digits and dashes, 8 to 32 digits); which job it names is
/// the master's to say.
pub fn plan(args: JobArgs) -> Result<JobPlan, PlanError> {
    let id = args.jid.trim();
    let digits = id.chars().filter(|c| *c != '-').count();
    let hex = id.chars().all(|c| c == '-' || c.is_ascii_hexdigit());
    if !hex || !(MIN_ID_DIGITS..=32).contains(&digits) {
        return Err(PlanError::NotAnId(args.jid));
    }
    Ok(JobPlan {
        id: id.to_owned(),
        wait: args.wait.then_some(args.timeout),
        out: args.out,
    })
}

/// Asks the master at `url` for the job and prints it.
pub async fn run(url: &str, operator: Operator, plan: JobPlan) -> anyhow::Result<ExitCode> {
    let mut client = MasterClient::connect(url, operator).await?;
    let answer = match client.send(plan.request()).await {
        Ok(call) => client.answer(&call, plan.answer_wait()).await,
        Err(e) => Err(e),
    };
    client.close().await;
    match answer? {
        ResponseBody::Job(view) => {
            let text = render_job(&view, plan.out)?;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
            Ok(ExitCode::from(exit_code_for(&view)))
        }
        ResponseBody::Error(reason) => {
            eprintln!("dispatch: {reason}");
            Ok(ExitCode::from(exit::FAILED))
        }
        other => anyhow::bail!("unexpected answer from the master: {other:?}"),
    }
}

/// The job as `out` prints it, ending in a newline.
pub fn render_job(view: &JobView, out: ViewOutput) -> anyhow::Result<String> {
    Ok(match out {
        ViewOutput::Text => job_text(view),
        ViewOutput::Json => serde_json::to_string_pretty(&JobReport::of(view))? + "\n",
        ViewOutput::Yaml => serde_yaml_ng::to_string(&JobReport::of(view))?,
    })
}

/// The minion has no return, and may still send one (or never will).
fn not_returned(state: MinionState) -> bool {
    matches!(
        state,
        MinionState::Running | MinionState::TimedOut | MinionState::Queued | MinionState::Expired
    )
}

/// 3 if a minion has not returned, else 1 if a return is not a success, else 0.
pub fn exit_code_for(view: &JobView) -> u8 {
    let states = || view.minions.iter().map(|m| m.state);
    if states().any(not_returned) {
        exit::DID_NOT_RETURN
    } else if states().any(|s| s != MinionState::Succeeded) {
        exit::FAILED
    } else {
        exit::OK
    }
}

/// The job as `--out json` and `--out yaml` print it (fields in the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobReport<'a> {
    pub job_id: Uuid,
    pub submitted_by: &'a str,
    pub submitted_at_ms: u64,
    pub origin: &'a str,
    pub target: &'a str,
    pub command: &'a [String],
    pub shell: bool,
    pub env: &'a [(String, String)],
    pub cwd: Option<&'a str>,
    pub timeout_ms: u64,
    pub exec_timeout_ms: Option<u64>,
    pub ttl_ms: u64,
    pub expires_at_ms: u64,
    pub minions: Vec<JobMinion>,
}

impl<'a> JobReport<'a> {
    pub fn of(view: &'a JobView) -> Self {
        Self {
            job_id: view.job_id,
            submitted_by: &view.submitted_by,
            submitted_at_ms: view.submitted_at_ms,
            origin: &view.origin,
            target: &view.target,
            command: &view.exec.argv,
            shell: view.exec.shell,
            env: &view.exec.env,
            cwd: view.exec.cwd.as_deref(),
            timeout_ms: view.wait_ms,
            exec_timeout_ms: view.exec.timeout_ms,
            ttl_ms: view.ttl_ms,
            expires_at_ms: view.expires_at_ms,
            minions: view
                .minions
                .iter()
                .map(|m| JobMinion::of(view.job_id, m))
                .collect(),
        }
    }
}

/// One expected minion of [`JobReport`]: `dispatch run`'s object with the job state as
/// `status`, and when the return arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobMinion {
    #[serde(flatten)]
    pub record: MinionRecord<MinionState>,
    pub arrived_at_ms: Option<u64>,
}

impl JobMinion {
    pub fn of(job_id: Uuid, minion: &MinionReturn) -> Self {
        let record = MinionRecord::new(
            &minion.minion,
            job_id,
            minion.state,
            minion.outcome.as_ref(),
        );
        Self {
            record,
            arrived_at_ms: minion.arrived_at_ms,
        }
    }
}

/// The text output (see the module doc).
pub fn job_text(view: &JobView) -> String {
    let mut text = format!("job {}\n", view.job_id);
    text += &format!(
        "  submitted: {} by {}\n",
        render::time(view.submitted_at_ms),
        view.submitted_by
    );
    text += &format!("  origin:    {}\n", view.origin);
    text += &format!("  target:    {}\n", view.target);
    let shell = if view.exec.shell {
        " (through /bin/sh -c)"
    } else {
        ""
    };
    text += &format!("  command:   {}{shell}\n", view.exec.argv.join(" "));
    text += &format!(
        "  ttl:       {} (a queued command expires at {})\n",
        render::duration(Duration::from_millis(view.ttl_ms)),
        render::time(view.expires_at_ms)
    );
    if !view.minions.is_empty() {
        text.push('\n');
    }
    for minion in &view.minions {
        text += &minion_text(minion, view.expires_at_ms);
    }
    text.push('\n');
    text += &counts_text(view);
    text
}

/// One expected minion: its id and state, then its return as `dispatch run` prints it,
/// or why there is none.
fn minion_text(minion: &MinionReturn, expires_at_ms: u64) -> String {
    let state = minion.state.as_str();
    match (&minion.outcome, minion.arrived_at_ms) {
        (Some(outcome), Some(at)) => format!(
            "{}: {state} (returned at {})\n{}",
            minion.minion,
            render::time(at),
            outcome_text(outcome)
        ),
        (Some(outcome), None) => format!("{}: {state}\n{}", minion.minion, outcome_text(outcome)),
        (None, _) => {
            let expires = render::time(expires_at_ms);
            let why = match minion.state {
                MinionState::Running => "connected when published; no return yet".to_owned(),
                MinionState::TimedOut => {
                    "connected when published; no return within its exec timeout".to_owned()
                }
                MinionState::Queued => format!(
                    "offline when published; the command waits in its queue until {expires}"
                ),
                MinionState::Expired => {
                    format!("offline when published; the command expired in its queue at {expires}")
                }
                _ => return format!("{}: {state}\n", minion.minion),
            };
            format!("{}: {state} ({why})\n", minion.minion)
        }
    }
}

/// The closing lines: how many minions are in each state, and how to wait for the rest.
fn counts_text(view: &JobView) -> String {
    let job_id = view.job_id;
    if view.minions.is_empty() {
        return format!("job {job_id}: the target named no minion\n");
    }
    let counts: Vec<(MinionState, u32)> = view.minions.iter().map(|m| (m.state, 1)).collect();
    let total = view.minions.len();
    let mut text = format!(
        "job {job_id}: {total} {}: {}\n",
        if total == 1 { "minion" } else { "minions" },
        render::state_counts(&counts)
    );
    if !view.complete() {
        text += &format!(
            "  not every minion has returned: `dispatch job {job_id} --wait` waits for them\n"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use dispatch_common::message::{Exec, ExecResult, Outcome};

    const JOB: Uuid = Uuid::from_u128(0x0190_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b);

    fn parse(words: &[&str]) -> Result<JobPlan, String> {
        let cli = Cli::try_parse_from(["dispatch", "job"].iter().chain(words))
            .map_err(|e| e.to_string())?;
        match cli.command {
            Command::Job(args) => plan(args).map_err(|e| e.to_string()),
            other => panic!("not a job: {other:?}"),
        }
    }

    fn returned(minion: &str, state: MinionState, result: ExecResult) -> MinionReturn {
        MinionReturn {
            minion: minion.to_owned(),
            state,
            arrived_at_ms: Some(61_000),
            outcome: Some(Outcome::Finished(result)),
        }
    }

    fn exited(minion: &str, code: i32, stdout: &str) -> MinionReturn {
        let state = if code == 0 {
            MinionState::Succeeded
        } else {
            MinionState::Failed
        };
        let result = ExecResult {
            exit_code: Some(code),
            stdout: stdout.as_bytes().to_vec(),
            duration_ms: 7,
            ..Default::default()
        };
        returned(minion, state, result)
    }

    fn waiting(minion: &str, state: MinionState) -> MinionReturn {
        MinionReturn {
            minion: minion.to_owned(),
            state,
            arrived_at_ms: None,
            outcome: None,
        }
    }

    fn view(minions: Vec<MinionReturn>) -> JobView {
        JobView {
            job_id: JOB,
            submitted_by: "operator.local".to_owned(),
            submitted_at_ms: 60_000,
            origin: "cli".to_owned(),
            target: "web.*".to_owned(),
            exec: Exec {
                argv: vec!["ls".into(), "-la".into(), "/tmp".into()],
                shell: false,
                env: vec![],
                cwd: None,
                timeout_ms: Some(3_600_000),
            },
            wait_ms: 30_000,
            ttl_ms: 3_600_000,
            expires_at_ms: 3_660_000,
            minions,
        }
    }

    #[test]
    fn a_whole_id_a_prefix_and_a_suffix_are_sent_as_typed() {
        for id in [
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "0190a1b2",
            "2e3f4a5b",
            "0190A1B2c3",
        ] {
            let plan = parse(&[id]).unwrap();
            assert_eq!(
                plan.request(),
                RequestBody::Job {
                    id: id.to_owned(),
                    wait_ms: None
                }
            );
            assert_eq!(plan.answer_wait(), RPC_TIMEOUT);
            assert_eq!(plan.out, ViewOutput::Text);
        }
    }

    #[test]
    fn short_or_non_hex_ids_are_refused_before_asking() {
        for bad in [
            "0190a1b",
            "job-1",
            "xyzxyzxyz",
            "",
            "0190a1b2c3d4e5f60190a1b2c3d4e5f6a",
        ] {
            let error = parse(&[bad]).unwrap_err();
            assert!(error.contains("is not a job id"), "{bad}: {error}");
        }
    }

    #[test]
    fn wait_sends_the_timeout_and_waits_ten_seconds_longer() {
        let plan = parse(&["--wait", "0190a1b2"]).unwrap();
        assert_eq!(
            plan.request(),
            RequestBody::Job {
                id: "0190a1b2".into(),
                wait_ms: Some(300_000)
            }
        );
        assert_eq!(plan.answer_wait(), Duration::from_secs(310));
        let plan = parse(&["--wait", "--timeout", "30s", "--out", "yaml", "0190a1b2"]).unwrap();
        assert_eq!(plan.wait, Some(Duration::from_secs(30)));
        assert_eq!(plan.out, ViewOutput::Yaml);
    }

    #[test]
    fn timeout_without_wait_is_a_usage_error() {
        let error = parse(&["--timeout", "30s", "0190a1b2"]).unwrap_err();
        assert!(error.contains("--wait"), "{error}");
    }

    #[test]
    fn exit_code_is_0_1_or_3_as_for_run() {
        let ok = view(vec![exited("a", 0, ""), exited("b", 0, "")]);
        assert_eq!(exit_code_for(&ok), exit::OK);
        assert_eq!(exit_code_for(&view(vec![])), exit::OK);
        let failed = view(vec![exited("a", 0, ""), exited("b", 2, "")]);
        assert_eq!(exit_code_for(&failed), exit::FAILED);
        for state in [MinionState::Refused, MinionState::Interrupted] {
            assert_eq!(
                exit_code_for(&view(vec![waiting("a", state)])),
                exit::FAILED
            );
        }
        for state in [
            MinionState::Running,
            MinionState::TimedOut,
            MinionState::Queued,
            MinionState::Expired,
        ] {
            let missing = view(vec![exited("a", 2, ""), waiting("b", state)]);
            assert_eq!(exit_code_for(&missing), exit::DID_NOT_RETURN, "{state:?}");
        }
    }

    #[test]
    fn text_shows_the_header_each_minion_and_the_counts() {
        let job = view(vec![
            exited("web.01", 0, "hello\n"),
            exited("web.02", 1, ""),
            waiting("web.03", MinionState::Queued),
        ]);
        assert_eq!(
            job_text(&job),
            format!(
                "job {JOB}\n\
                 \x20 submitted: 1970-01-01T00:01:00Z by operator.local\n\
                 \x20 origin:    cli\n\
                 \x20 target:    web.*\n\
                 \x20 command:   ls -la /tmp\n\
                 \x20 ttl:       1h (a queued command expires at 1970-01-01T01:01:00Z)\n\
                 \n\
                 web.01: succeeded (returned at 1970-01-01T00:01:01Z)\n\
                 \x20   hello\n\
                 web.02: failed (returned at 1970-01-01T00:01:01Z)\n\
                 \x20 [exit 1]\n\
                 web.03: queued (offline when published; the command waits in its queue \
                 until 1970-01-01T01:01:00Z)\n\
                 \n\
                 job {JOB}: 3 minions: 1 succeeded, 1 failed, 1 queued\n\
                 \x20 not every minion has returned: `dispatch job {JOB} --wait` waits for them\n"
            )
        );
    }

    #[test]
    fn text_of_a_complete_job_has_no_wait_hint_and_says_why_a_minion_is_missing() {
        let job = view(vec![
            exited("a", 0, ""),
            waiting("b", MinionState::Expired),
            waiting("c", MinionState::TimedOut),
        ]);
        let text = job_text(&job);
        assert!(text.contains("a: succeeded (returned at 1970-01-01T00:01:01Z)\n  [no output]\n"));
        assert!(
            text.contains(
                "b: expired (offline when published; the command expired in its queue at "
            )
        );
        assert!(text.contains(
            "c: timed_out (connected when published; no return within its exec timeout)\n"
        ));
        assert!(
            text.ends_with("3 minions: 1 succeeded, 1 timed_out, 1 expired\n"),
            "{text}"
        );
        let running = job_text(&view(vec![waiting("a", MinionState::Running)]));
        assert!(running.contains("a: running (connected when published; no return yet)\n"));
    }

    #[test]
    fn json_is_one_object_with_run_records_and_job_states() {
        let job = view(vec![
            exited("web.01", 0, "hi\n"),
            waiting("web.02", MinionState::Queued),
        ]);
        let json: serde_json::Value =
            serde_json::from_str(&render_job(&job, ViewOutput::Json).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "job_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                "submitted_by": "operator.local",
                "submitted_at_ms": 60_000,
                "origin": "cli",
                "target": "web.*",
                "command": ["ls", "-la", "/tmp"],
                "shell": false,
                "env": [],
                "cwd": null,
                "timeout_ms": 30_000,
                "exec_timeout_ms": 3_600_000,
                "ttl_ms": 3_600_000,
                "expires_at_ms": 3_660_000,
                "minions": [
                    {
                        "minion": "web.01",
                        "job_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                        "status": "succeeded",
                        "exit_code": 0,
                        "signal": null,
                        "stdout": "hi\n",
                        "stdout_lossy": false,
                        "stdout_truncated": false,
                        "stderr": "",
                        "stderr_lossy": false,
                        "stderr_truncated": false,
                        "duration_ms": 7,
                        "exec_timed_out": false,
                        "error": null,
                        "reason": null,
                        "arrived_at_ms": 61_000,
                    },
                    {
                        "minion": "web.02",
                        "job_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                        "status": "queued",
                        "exit_code": null,
                        "signal": null,
                        "stdout": "",
                        "stdout_lossy": false,
                        "stdout_truncated": false,
                        "stderr": "",
                        "stderr_lossy": false,
                        "stderr_truncated": false,
                        "duration_ms": null,
                        "exec_timed_out": false,
                        "error": null,
                        "reason": null,
                        "arrived_at_ms": null,
                    },
                ],
            })
        );
    }

    #[test]
    fn yaml_has_the_same_fields() {
        let job = view(vec![waiting("web.02", MinionState::TimedOut)]);
        let yaml = render_job(&job, ViewOutput::Yaml).unwrap();
        assert!(
            yaml.starts_with("job_id: 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\n"),
            "{yaml}"
        );
        assert!(yaml.contains("- minion: web.02\n"), "{yaml}");
        assert!(yaml.contains("  status: timed_out\n"), "{yaml}");
        assert!(yaml.contains("  arrived_at_ms: null\n"), "{yaml}");
    }
}
