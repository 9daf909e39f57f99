//! `dispatch run`: submit a command to the master and render the returns it forwards.
//!
//! Flow: [`plan`] checks the arguments and builds the [`RunSpec`] before any I/O (a bad
//! target costs no connection; the targeting and execution options go through
//! [`run_spec`], which `dispatch schedule add` shares); [`run`] connects, sends it, and
//! reads the master's answers: first [`ResponseBody::Started`] (the job id and who is
//! targeted), then one [`ResponseBody::Return`] per minion as the master records it,
//! and last a [`ResponseBody::Summary`] naming who did not return when the wait
//! (`--timeout`) ended.
//! The master does the waiting; the CLI only waits `--timeout` + [`ANSWER_SLACK`] for
//! each answer. Ctrl-C, a lost connection or a missing summary stop the CLI, never the
//! job: its returns land in the job store (`dispatch job JID`).
//!
//! # Text output (`--out text`, the default)
//!
//! Each minion's return as it arrives, under its id: stdout lines indented by four
//! spaces, then stderr lines under a `  stderr:` heading, then one bracketed line per
//! remark, indented by two spaces:
//!
//! ```text
//! web.01:
//!     hello
//! web.02:
//!   stderr:
//!     cat: /nope: No such file or directory
//!   [exit 1]
//! ```
//!
//! Remarks: `[no output]`, `[stdout truncated]`, `[stderr truncated]`, `[stdout not
//! UTF-8: invalid bytes replaced]` (and for stderr), `[exit N]`, `[killed by signal N]`,
//! `[timed out: killed after --exec-timeout]`, `[error: WHY]` (the command could not be
//! started, e.g. `command not found: x`), `[refused: WHY]` and `[interrupted: …]`.
//! Then a blank line and the summary, which always names the job id:
//!
//! ```text
//! job 0190a1b2-…: 5 minions: 2 succeeded, 1 failed, 2 did not return
//!   failed: web.02 (exit 1)
//!   timed out (no return within 30s): web.05
//!   offline (the command waits in their queue for 1h): web.06
//!   not started yet (rolling batch): web.07
//!   the job goes on: `dispatch job 0190a1b2-…` shows their returns later
//! ```
//!
//! When stderr is a terminal, a progress line (`3/5 returned`) is drawn there while
//! waiting.
//!
//! # JSON output (`--out json`) and YAML output (`--out yaml`)
//!
//! JSON: one object per minion and line, as returns arrive; then one object for each
//! minion that did not return. YAML: one list of the same objects, printed at the end.
//! The fields ([`MinionRecord`]), always all present:
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `minion` | string | the minion's id |
//! | `job_id` | string | the job's UUID |
//! | `status` | string | `succeeded`, `failed` (non-zero exit, signal, exec timeout or could not start), `refused`, `interrupted`, or for no return: `timed_out`, `offline`, `not_started` |
//! | `exit_code` | int or null | the exit status, when the process exited |
//! | `signal` | int or null | the signal that ended the process |
//! | `stdout`, `stderr` | string | captured output as UTF-8 (`""` when none) |
//! | `stdout_lossy`, `stderr_lossy` | bool | invalid UTF-8 was replaced by U+FFFD |
//! | `stdout_truncated`, `stderr_truncated` | bool | the minion's capture limit cut it |
//! | `duration_ms` | int or null | how long the command ran |
//! | `exec_timed_out` | bool | killed after `--exec-timeout` |
//! | `error` | string or null | why the command could not be started |
//! | `reason` | string or null | why the minion refused it (status `refused`) |
//!
//! With `--async` the master only publishes: text prints the job id alone; JSON and YAML
//! print an object with `job_id`, `expected` and `offline` (arrays of ids).
//!
//! # Exit codes
//!
//! [`exit_code_for`]: 3 if any target did not return (timed out, offline, not started),
//! else 1 if any returned a failure, was refused or interrupted, else 0. 1 also when the
//! master refuses the request; 2 for usage and connection errors; 130 after Ctrl-C.

use crate::cli::{RunArgs, RunOptions, RunOutput, exit};
use crate::client::{MasterClient, Operator};
use crate::render;
use crate::returns::{MinionRecord, Status, failure, text_block};
use dispatch_common::message::{Exec, Outcome, Reply};
use dispatch_common::names::NameError;
use dispatch_common::rpc::{JobStarted, JobSummary, RequestBody, ResponseBody, RunSpec};
use dispatch_common::target::Target;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::pin::pin;
use std::process::ExitCode;
use std::time::Duration;
use uuid::Uuid;

/// How much longer than `--timeout` the CLI waits for each answer: the master ends the
/// wait itself and sends the summary, so this only covers a master that went away.
pub const ANSWER_SLACK: Duration = Duration::from_secs(10);

/// A checked `dispatch run`: the request to send and how to print its answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPlan {
    pub spec: RunSpec,
    pub out: RunOutput,
}

impl RunPlan {
    /// How long to wait for each answer of the master.
    pub fn answer_wait(&self) -> Duration {
        Duration::from_millis(self.spec.wait_ms) + ANSWER_SLACK
    }
}

/// The verb whose run options are checked, named in the messages of [`PlanError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `dispatch run`.
    Run,
    /// `dispatch schedule add`.
    ScheduleAdd,
}

impl Verb {
    /// The verb as typed after `dispatch`.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Run => "run",
            Verb::ScheduleAdd => "schedule add",
        }
    }

    /// How the verb takes a target and a command.
    fn usage(self) -> &'static str {
        match self {
            Verb::Run => {
                "`dispatch run TARGET CMD [ARGS]…` (or `dispatch run -G GROUP CMD [ARGS]…`)"
            }
            Verb::ScheduleAdd => {
                "`dispatch schedule add NAME --cron EXPR TARGET CMD [ARGS]…` (or `… -G GROUP \
                 CMD [ARGS]…`)"
            }
        }
    }
}

/// Why the run options of `dispatch run` (or `dispatch schedule add`) make no request
/// (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Target(#[from] NameError),
    #[error("unknown option '{word}' for `dispatch {name}`; see `dispatch {name} --help`", name = .verb.name())]
    UnknownOption { verb: Verb, word: String },
    #[error("no command to run after the target '{target}': {}", .verb.usage())]
    NoCommand { verb: Verb, target: String },
    #[error("{0} must be longer than 0")]
    ZeroDuration(&'static str),
    #[error("--cwd must be an absolute path on the minions, not '{0}'")]
    RelativeCwd(String),
}

/// Turns the arguments of `dispatch run` into a request, checking everything that can
/// be checked here ([`run_spec`], then `--async` and `--out`).
pub fn plan(args: RunArgs) -> Result<RunPlan, PlanError> {
    let mut spec = run_spec(Verb::Run, args.options)?;
    spec.detach = args.detach;
    Ok(RunPlan {
        spec,
        out: args.out,
    })
}

/// Turns the run options of `verb` into what a job runs where (not detached).
///
/// Without `-G`/`-L` the first word is the target and the rest the command; with them,
/// every word is the command. A `--` where the command starts is dropped, so
/// `dispatch run '*' -- ls` and `dispatch run -G web -- ls` both run `ls`.
pub fn run_spec(verb: Verb, options: RunOptions) -> Result<RunSpec, PlanError> {
    let mut words = options.words.into_iter();
    let target = match (&options.group, &options.list) {
        (Some(group), _) => Target::group(group)?,
        (None, Some(list)) => Target::list(list)?,
        (None, None) => {
            // Options come before TARGET, so a word that looks like one is a typo.
            let word = words.next().unwrap_or_default();
            if word.starts_with('-') {
                return Err(PlanError::UnknownOption { verb, word });
            }
            Target::pattern(&word)?
        }
    };
    let mut argv: Vec<String> = words.collect();
    if argv.first().is_some_and(|word| word == "--") {
        argv.remove(0);
    }
    if argv.is_empty() {
        return Err(PlanError::NoCommand {
            verb,
            target: target.to_string(),
        });
    }
    let millis = |flag: &'static str, duration: Duration| match duration.as_millis() {
        0 => Err(PlanError::ZeroDuration(flag)),
        ms => Ok(u64::try_from(ms).unwrap_or(u64::MAX)),
    };
    if let Some(cwd) = &options.cwd
        && !cwd.starts_with('/')
    {
        return Err(PlanError::RelativeCwd(cwd.clone()));
    }
    Ok(RunSpec {
        target,
        exec: Exec {
            argv,
            shell: options.shell,
            env: options.env,
            cwd: options.cwd,
            timeout_ms: Some(millis("--exec-timeout", options.exec_timeout)?),
        },
        wait_ms: millis("--timeout", options.timeout)?,
        ttl_ms: millis("--ttl", options.ttl)?,
        batch: options.batch,
        detach: false,
    })
}

/// Sends the plan's request to the master at `url` and prints the answers as they come.
pub async fn run(url: &str, operator: Operator, plan: RunPlan) -> anyhow::Result<ExitCode> {
    let mut client = MasterClient::connect(url, operator).await?;
    let code = submit_and_wait(&mut client, &plan).await;
    client.close().await;
    Ok(ExitCode::from(code?))
}

async fn submit_and_wait(client: &mut MasterClient, plan: &RunPlan) -> anyhow::Result<u8> {
    let wait = plan.answer_wait();
    let call = client.send(RequestBody::Run(plan.spec.clone())).await?;
    // Ctrl-C is caught only from here on: before, nothing was asked and the default
    // (die) is right. If the handler cannot be installed, Ctrl-C keeps its default.
    let mut ctrl_c = pin!(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let first = tokio::select! {
        () = &mut ctrl_c => {
            eprintln!("dispatch: stopped waiting; the job may have started: see `dispatch jobs`");
            return Ok(exit::INTERRUPTED);
        }
        answer = client.answer(&call, wait) => answer?,
    };
    let started = match first {
        ResponseBody::Started(started) => started,
        ResponseBody::Error(reason) => {
            eprintln!("dispatch: {reason}");
            return Ok(exit::FAILED);
        }
        other => anyhow::bail!("unexpected answer from the master: {other:?}"),
    };
    if plan.spec.detach {
        print_detached(plan.out, &started)?;
        return Ok(exit::OK);
    }
    let job_id = started.job_id;
    let later = format!("job {job_id} goes on: `dispatch job {job_id}`");
    let mut printer = Printer::new(plan.out, started);
    loop {
        let answer = tokio::select! {
            () = &mut ctrl_c => {
                printer.stop()?;
                eprintln!("dispatch: stopped waiting; {later}");
                return Ok(exit::INTERRUPTED);
            }
            answer = client.answer(&call, wait) => answer,
        };
        match answer {
            Ok(ResponseBody::Return(reply)) => printer.add(reply)?,
            Ok(ResponseBody::Summary(summary)) => return printer.finish(&summary, &plan.spec),
            Ok(ResponseBody::Error(reason)) => {
                printer.stop()?;
                eprintln!("dispatch: {reason}; {later}");
                return Ok(exit::FAILED);
            }
            Ok(other) => {
                printer.stop()?;
                eprintln!("dispatch: unexpected answer from the master: {other:?}; {later}");
                return Ok(exit::USAGE);
            }
            Err(e) => {
                printer.stop()?;
                eprintln!("dispatch: {e}; {later}");
                return Ok(exit::USAGE);
            }
        }
    }
}

/// The `--async` answer: the job id alone, or an object for JSON and YAML.
fn print_detached(out: RunOutput, started: &JobStarted) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct Detached<'a> {
        job_id: Uuid,
        expected: &'a [String],
        offline: &'a [String],
    }
    let detached = Detached {
        job_id: started.job_id,
        expected: &started.expected,
        offline: &started.offline,
    };
    let text = match out {
        RunOutput::Text => format!("{}\n", started.job_id),
        RunOutput::Json => serde_json::to_string(&detached)? + "\n",
        RunOutput::Yaml => serde_yaml_ng::to_string(&detached)?,
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

/// Prints returns as they arrive and the summary at the end, with a progress line on
/// stderr when it is a terminal.
struct Printer {
    out: RunOutput,
    started: JobStarted,
    replies: Vec<Reply>,
    progress: ProgressBar,
}

impl Printer {
    fn new(out: RunOutput, started: JobStarted) -> Self {
        let progress = if std::io::stderr().is_terminal() {
            let progress = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                progress.set_style(style);
            }
            progress.enable_steady_tick(Duration::from_millis(200));
            progress
        } else {
            ProgressBar::hidden()
        };
        let printer = Self {
            out,
            started,
            replies: Vec::new(),
            progress,
        };
        printer.show_progress();
        printer
    }

    fn show_progress(&self) {
        let mut line = format!(
            "{}/{} returned",
            self.replies.len(),
            self.started.expected.len()
        );
        if !self.started.offline.is_empty() {
            line += &format!(" ({} offline)", self.started.offline.len());
        }
        self.progress.set_message(line);
    }

    /// Writes to stdout with the progress line out of the way.
    fn emit(&self, text: &str) -> std::io::Result<()> {
        self.progress.suspend(|| {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes())?;
            stdout.flush()
        })
    }

    fn add(&mut self, reply: Reply) -> anyhow::Result<()> {
        if self.replies.iter().any(|r| r.minion == reply.minion) {
            return Ok(()); // a minion returns once; a repeat adds nothing
        }
        match self.out {
            RunOutput::Text => self.emit(&text_block(&reply))?,
            RunOutput::Json => {
                self.emit(&(serde_json::to_string(&MinionRecord::of_reply(&reply))? + "\n"))?
            }
            RunOutput::Yaml => {}
        }
        self.replies.push(reply);
        self.show_progress();
        Ok(())
    }

    /// The summary: who did not return, then the exit code.
    fn finish(self, summary: &JobSummary, spec: &RunSpec) -> anyhow::Result<u8> {
        self.progress.finish_and_clear();
        let missing = Missing::after(&self.started, summary, &self.replies);
        let job_id = self.started.job_id;
        match self.out {
            RunOutput::Text => {
                self.emit(&format!(
                    "\n{}",
                    summary_text(job_id, &self.replies, &missing, spec)
                ))?;
            }
            RunOutput::Json => {
                let mut lines = String::new();
                for record in missing.records(job_id) {
                    lines += &(serde_json::to_string(&record)? + "\n");
                }
                self.emit(&lines)?;
            }
            RunOutput::Yaml => {
                let records: Vec<MinionRecord> = self
                    .replies
                    .iter()
                    .map(MinionRecord::of_reply)
                    .chain(missing.records(job_id))
                    .collect();
                self.emit(&serde_yaml_ng::to_string(&records)?)?;
            }
        }
        Ok(exit_code_for(&self.replies, &missing))
    }

    /// Stops early (Ctrl-C, lost master): YAML still prints the returns it has.
    fn stop(self) -> anyhow::Result<()> {
        self.progress.finish_and_clear();
        if self.out == RunOutput::Yaml && !self.replies.is_empty() {
            let records: Vec<MinionRecord> =
                self.replies.iter().map(MinionRecord::of_reply).collect();
            self.emit(&serde_yaml_ng::to_string(&records)?)?;
        }
        Ok(())
    }
}

/// The targets that did not return, from the summary less those whose return did come;
/// a targeted minion that is in no list and did not return counts as timed out, so
/// every target is accounted for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Missing {
    pub timed_out: Vec<String>,
    pub offline: Vec<String>,
    pub not_started: Vec<String>,
}

impl Missing {
    pub fn after(started: &JobStarted, summary: &JobSummary, replies: &[Reply]) -> Self {
        /// The ids not yet seen, now seen.
        fn unseen<'a>(seen: &mut HashSet<&'a str>, ids: &'a [String]) -> Vec<String> {
            ids.iter()
                .filter(|id| seen.insert(id.as_str()))
                .cloned()
                .collect()
        }
        let mut seen: HashSet<&str> = replies.iter().map(|r| r.minion.as_str()).collect();
        let offline = unseen(&mut seen, &summary.offline);
        let not_started = unseen(&mut seen, &summary.not_started);
        let mut timed_out = unseen(&mut seen, &summary.timed_out);
        timed_out.extend(unseen(&mut seen, &started.expected));
        Self {
            timed_out,
            offline,
            not_started,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.timed_out.len() + self.offline.len() + self.not_started.len()
    }

    /// One record per missing minion: timed out, then offline, then not started.
    pub fn records(&self, job_id: Uuid) -> impl Iterator<Item = MinionRecord> + '_ {
        [
            (&self.timed_out, Status::TimedOut),
            (&self.offline, Status::Offline),
            (&self.not_started, Status::NotStarted),
        ]
        .into_iter()
        .flat_map(move |(ids, status)| {
            ids.iter()
                .map(move |id| MinionRecord::new(id, job_id, status, None))
        })
    }
}

/// 3 if any target did not return, else 1 if any return is not a success, else 0.
pub fn exit_code_for(replies: &[Reply], missing: &Missing) -> u8 {
    if !missing.is_empty() {
        exit::DID_NOT_RETURN
    } else if replies
        .iter()
        .any(|r| Status::of_outcome(&r.outcome) != Status::Succeeded)
    {
        exit::FAILED
    } else {
        exit::OK
    }
}

/// What a failed return was, in a word or two, for the summary.
fn short_failure(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Finished(result) => match failure(result) {
            Some(_) if result.error.is_some() => "error".to_owned(),
            Some(_) if result.timed_out => "timed out".to_owned(),
            Some(why) => why,
            None => "ok".to_owned(),
        },
        Outcome::Refused { .. } => "refused".to_owned(),
        Outcome::Interrupted => "interrupted".to_owned(),
    }
}

/// The closing summary of the text output (see the module doc).
pub fn summary_text(job_id: Uuid, replies: &[Reply], missing: &Missing, spec: &RunSpec) -> String {
    let failed: Vec<&Reply> = replies
        .iter()
        .filter(|r| Status::of_outcome(&r.outcome) != Status::Succeeded)
        .collect();
    let total = replies.len() + missing.len();
    let mut head = format!(
        "job {job_id}: {total} {}: {} succeeded",
        if total == 1 { "minion" } else { "minions" },
        replies.len() - failed.len(),
    );
    if !failed.is_empty() {
        head += &format!(", {} failed", failed.len());
    }
    if !missing.is_empty() {
        head += &format!(", {} did not return", missing.len());
    }
    let mut text = head + "\n";
    if !failed.is_empty() {
        let names: Vec<String> = failed
            .iter()
            .map(|r| format!("{} ({})", r.minion, short_failure(&r.outcome)))
            .collect();
        text += &format!("  failed: {}\n", names.join(", "));
    }
    let wait = render::duration(Duration::from_millis(spec.wait_ms));
    let ttl = render::duration(Duration::from_millis(spec.ttl_ms));
    let groups = [
        (
            format!("timed out (no return within {wait})"),
            &missing.timed_out,
        ),
        (
            format!("offline (the command waits in their queue for {ttl})"),
            &missing.offline,
        ),
        (
            "not started yet (rolling batch)".to_owned(),
            &missing.not_started,
        ),
    ];
    for (what, ids) in groups {
        if !ids.is_empty() {
            text += &format!("  {what}: {}\n", ids.join(", "));
        }
    }
    if !missing.is_empty() {
        text += &format!("  the job goes on: `dispatch job {job_id}` shows their returns later\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::returns::fixtures::{JOB, exited, refused};
    use clap::Parser;
    use dispatch_common::rpc::Batch;

    fn parse(words: &[&str]) -> Result<RunPlan, String> {
        let cli = Cli::try_parse_from(["dispatch", "run"].iter().chain(words))
            .map_err(|e| e.to_string())?;
        match cli.command {
            Command::Run(args) => plan(args).map_err(|e| e.to_string()),
            other => panic!("not a run: {other:?}"),
        }
    }

    fn argv(plan: &RunPlan) -> Vec<&str> {
        plan.spec.exec.argv.iter().map(String::as_str).collect()
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn started(expected: &[&str]) -> JobStarted {
        JobStarted {
            job_id: JOB,
            expected: ids(expected),
            offline: vec![],
        }
    }

    fn summary(timed_out: &[&str], offline: &[&str], not_started: &[&str]) -> JobSummary {
        JobSummary {
            job_id: JOB,
            timed_out: ids(timed_out),
            offline: ids(offline),
            not_started: ids(not_started),
        }
    }

    #[test]
    fn star_then_command_with_dashes_runs_verbatim_on_everyone() {
        let plan = parse(&["*", "ls", "-la", "/tmp"]).unwrap();
        assert_eq!(plan.spec.target, Target::All);
        assert_eq!(argv(&plan), ["ls", "-la", "/tmp"]);
    }

    #[test]
    fn options_after_the_command_belong_to_the_command() {
        let plan = parse(&["web.*", "grep", "--timeout", "--out", "x"]).unwrap();
        assert_eq!(plan.spec.target, Target::Pattern("web.*".into()));
        assert_eq!(argv(&plan), ["grep", "--timeout", "--out", "x"]);
        assert_eq!(plan.spec.wait_ms, 30_000);
        assert_eq!(plan.out, RunOutput::Text);
    }

    #[test]
    fn with_a_group_the_first_word_is_the_command() {
        let plan = parse(&["-G", "web", "--", "ls", "-la", "/tmp"]).unwrap();
        assert_eq!(plan.spec.target, Target::Group("web".into()));
        assert_eq!(argv(&plan), ["ls", "-la", "/tmp"]);
        let plan = parse(&["-G", "web", "uptime"]).unwrap();
        assert_eq!(argv(&plan), ["uptime"]);
    }

    #[test]
    fn with_a_list_the_first_word_is_the_command() {
        let plan = parse(&["-L", "web.01,db.01", "uptime", "-p"]).unwrap();
        assert_eq!(
            plan.spec.target,
            Target::List(vec!["web.01".into(), "db.01".into()])
        );
        assert_eq!(argv(&plan), ["uptime", "-p"]);
    }

    #[test]
    fn double_dash_after_the_target_is_dropped_once() {
        assert_eq!(
            argv(&parse(&["web.01", "--", "ls", "-l"]).unwrap()),
            ["ls", "-l"]
        );
        assert_eq!(
            argv(&parse(&["web.01", "--", "--", "x"]).unwrap()),
            ["--", "x"]
        );
    }

    #[test]
    fn every_flag_lands_in_the_request() {
        let plan = parse(&[
            "--timeout",
            "5s",
            "--ttl",
            "10m",
            "--exec-timeout",
            "2m",
            "--shell",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--cwd",
            "/srv",
            "--batch",
            "25%",
            "--async",
            "--out",
            "json",
            "db.#",
            "echo $A | wc -c",
        ])
        .unwrap();
        let spec = &plan.spec;
        assert_eq!(
            (spec.wait_ms, spec.ttl_ms, spec.exec.timeout_ms),
            (5_000, 600_000, Some(120_000))
        );
        assert!(spec.exec.shell && spec.detach);
        assert_eq!(
            spec.exec.env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(spec.exec.cwd.as_deref(), Some("/srv"));
        assert_eq!(spec.batch, Some(Batch::Percent(25)));
        assert_eq!(plan.out, RunOutput::Json);
        assert_eq!(argv(&plan), ["echo $A | wc -c"]);
        assert_eq!(plan.answer_wait(), Duration::from_secs(15));
    }

    #[test]
    fn defaults_are_30s_wait_1h_ttl_1h_exec_timeout() {
        let spec = parse(&["*", "true"]).unwrap().spec;
        assert_eq!(
            (spec.wait_ms, spec.ttl_ms, spec.exec.timeout_ms),
            (30_000, 3_600_000, Some(3_600_000))
        );
        assert!(!spec.exec.shell && !spec.detach && spec.batch.is_none());
    }

    #[test]
    fn bad_targets_are_refused_with_the_name_rules() {
        let error = parse(&["Web.01", "ls"]).unwrap_err();
        assert!(error.starts_with("invalid target 'Web.01'"), "{error}");
        assert!(parse(&["web*", "ls"]).is_err());
        let error = parse(&["-G", "web.*", "ls"]).unwrap_err();
        assert!(error.starts_with("invalid group 'web.*'"), "{error}");
        assert!(parse(&["-L", ",", "ls"]).is_err());
        let error = parse(&["--bogus", "*", "ls"]).unwrap_err();
        assert!(error.starts_with("unknown option '--bogus'"), "{error}");
    }

    #[test]
    fn a_target_without_a_command_is_refused() {
        let error = parse(&["uptime"]).unwrap_err();
        assert!(
            error.starts_with("no command to run after the target 'uptime'"),
            "{error}"
        );
        assert!(parse(&["-G", "web", "--"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn zero_durations_relative_dirs_and_bad_values_are_refused() {
        assert_eq!(
            parse(&["--timeout", "0s", "*", "ls"]).unwrap_err(),
            "--timeout must be longer than 0"
        );
        assert!(parse(&["--exec-timeout", "0s", "*", "ls"]).is_err());
        assert!(
            parse(&["--cwd", "srv", "*", "ls"])
                .unwrap_err()
                .contains("absolute")
        );
        for bad in [
            &["--env", "=x", "*", "ls"][..],
            &["--env", "NOVALUE", "*", "ls"],
            &["--batch", "0", "*", "ls"],
            &["--timeout", "soon", "*", "ls"],
            &["--out", "xml", "*", "ls"],
            &["-G", "web", "-L", "a", "ls"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exit_code_is_0_when_everyone_succeeded() {
        let replies = [exited("a", 0, ""), exited("b", 0, "")];
        assert_eq!(exit_code_for(&replies, &Missing::default()), 0);
    }

    #[test]
    fn exit_code_is_1_when_someone_failed_or_refused() {
        let replies = [exited("a", 0, ""), exited("b", 3, "")];
        assert_eq!(exit_code_for(&replies, &Missing::default()), 1);
        assert_eq!(exit_code_for(&[refused("a")], &Missing::default()), 1);
    }

    #[test]
    fn exit_code_is_3_when_someone_did_not_return_even_if_another_failed() {
        let replies = [exited("a", 3, "")];
        for missing in [
            summary(&["b"], &[], &[]),
            summary(&[], &["b"], &[]),
            summary(&[], &[], &["b"]),
        ] {
            let missing = Missing::after(&started(&["a", "b"]), &missing, &replies);
            assert_eq!(exit_code_for(&replies, &missing), 3);
        }
    }

    #[test]
    fn a_minion_that_returned_is_not_missing_and_an_unlisted_one_timed_out() {
        let replies = [exited("a", 0, "")];
        let missing = Missing::after(
            &started(&["a", "b", "c", "d"]),
            &summary(&["a"], &["b"], &[]),
            &replies,
        );
        assert_eq!(
            missing,
            Missing {
                timed_out: ids(&["c", "d"]),
                offline: ids(&["b"]),
                not_started: vec![],
            }
        );
    }

    #[test]
    fn json_of_a_refusal_and_of_no_return() {
        let json = serde_json::to_value(MinionRecord::of_reply(&refused("a"))).unwrap();
        assert_eq!(json["status"], "refused");
        assert_eq!(json["reason"], "expired");
        assert_eq!(json["stdout"], "");
        let missing = Missing::after(&started(&[]), &summary(&["t"], &["o"], &["n"]), &[]);
        let statuses: Vec<serde_json::Value> = missing
            .records(JOB)
            .map(|r| serde_json::to_value(r).unwrap()["status"].clone())
            .collect();
        assert_eq!(statuses, ["timed_out", "offline", "not_started"]);
    }

    #[test]
    fn summary_of_a_clean_run_is_one_line_with_the_job_id() {
        let spec = parse(&["*", "true"]).unwrap().spec;
        let replies = [exited("a", 0, ""), exited("b", 0, "")];
        assert_eq!(
            summary_text(JOB, &replies, &Missing::default(), &spec),
            format!("job {JOB}: 2 minions: 2 succeeded\n")
        );
    }

    #[test]
    fn summary_names_who_failed_and_who_did_not_return_with_the_job_id() {
        let spec = parse(&["*", "true"]).unwrap().spec;
        let replies = [exited("a", 0, ""), exited("b", 3, ""), refused("c")];
        let missing = Missing {
            timed_out: ids(&["d"]),
            offline: ids(&["e", "f"]),
            not_started: ids(&["g"]),
        };
        assert_eq!(
            summary_text(JOB, &replies, &missing, &spec),
            format!(
                "job {JOB}: 7 minions: 1 succeeded, 2 failed, 4 did not return\n\
                 \x20 failed: b (exit 3), c (refused)\n\
                 \x20 timed out (no return within 30s): d\n\
                 \x20 offline (the command waits in their queue for 1h): e, f\n\
                 \x20 not started yet (rolling batch): g\n\
                 \x20 the job goes on: `dispatch job {JOB}` shows their returns later\n"
            )
        );
    }
}
