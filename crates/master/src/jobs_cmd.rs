//! `dispatch jobs`: recent jobs from the master's job store, newest first, with how many
//! expected minions are in each state.
//!
//! Flow: [`plan`] checks the filters and builds the [`JobQuery`] before any I/O
//! (`--since 1h` becomes a start time; a bad `--target` or `--status` is exit 2);
//! [`run`] sends [`RequestBody::Jobs`] and prints the [`ResponseBody::Jobs`] answer.
//! The master filters: `--target` keeps jobs whose target as typed the pattern covers,
//! `--status` jobs with at least one minion in that state.
//!
//! # Text output (`--out text`, the default)
//!
//! A table, newest first, with the columns JOB ID (the whole id), SUBMITTED (`3m ago`
//! within a day, else the UTC time), BY, TARGET, COMMAND (cut to 40 characters) and
//! STATES (`2 succeeded, 1 queued`; `-` when the target named no minion).
//!
//! # JSON output (`--out json`) and YAML output (`--out yaml`)
//!
//! One array of objects ([`JobLine`]), newest first, with the fields `job_id` (string),
//! `submitted_by` (string), `submitted_at_ms` (Unix milliseconds), `origin` (`cli` or a
//! schedule's name), `target` (as typed), `command` (the argv, an array of strings, as
//! in `dispatch job`) and `counts` (an object from state name — `succeeded`, `failed`,
//! `refused`, `interrupted`, `running`, `timed_out`, `queued`, `expired` — to how many
//! minions are in it; states with none are left out).
//!
//! Exit codes: 0 when the master answered (even with no jobs), 1 when it refused, 2 for
//! usage and connection errors.

use crate::cli::{JobsArgs, ViewOutput, exit};
use crate::client::{MasterClient, Operator};
use crate::render::{self, COMMAND_WIDTH};
use dispatch_common::names::NameError;
use dispatch_common::rpc::{JobListing, JobQuery, MinionState, RequestBody, ResponseBody};
use dispatch_common::target::Target;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::io::Write;
use std::process::ExitCode;
use uuid::Uuid;

/// Jobs younger than this show their age (`3m ago`), older ones their time.
const AGE_SHOWN_MS: u64 = 24 * 3600 * 1000;

/// A checked `dispatch jobs`: the query and how to print the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsPlan {
    pub query: JobQuery,
    pub out: ViewOutput,
}

impl JobsPlan {
    /// Some filter beyond the limit is set (so an empty answer means "none match").
    pub fn filtered(&self) -> bool {
        let q = &self.query;
        q.since_ms.is_some() || q.target.is_some() || q.status.is_some()
    }
}

/// Checks the filters (clap already checked `--limit`, `--since` and `--status`) and
/// builds the query; `--since` counts back from `now_ms`.
pub fn plan(args: JobsArgs, now_ms: u64) -> Result<JobsPlan, NameError> {
    if let Some(target) = &args.target {
        Target::pattern(target)?;
    }
    let since_ms = args
        .since
        .map(|since| now_ms.saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX)));
    Ok(JobsPlan {
        query: JobQuery {
            limit: args.limit,
            since_ms,
            target: args.target,
            status: args.status,
        },
        out: args.out,
    })
}

/// Asks the master at `url` for recent jobs and prints them.
pub async fn run(url: &str, operator: Operator, plan: JobsPlan) -> anyhow::Result<ExitCode> {
    let mut client = MasterClient::connect(url, operator).await?;
    let answer = client.call(RequestBody::Jobs(plan.query.clone())).await;
    client.close().await;
    match answer? {
        ResponseBody::Jobs(jobs) => {
            let text = match plan.out {
                ViewOutput::Text => {
                    jobs_table(&jobs, dispatch_common::message::now_ms(), plan.filtered())
                }
                ViewOutput::Json => serde_json::to_string_pretty(&lines(&jobs))? + "\n",
                ViewOutput::Yaml => serde_yaml_ng::to_string(&lines(&jobs))?,
            };
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        ResponseBody::Error(reason) => {
            eprintln!("dispatch: {reason}");
            Ok(ExitCode::from(exit::FAILED))
        }
        other => anyhow::bail!("unexpected answer from the master: {other:?}"),
    }
}

/// Jobs as an aligned table, ages counted back from `now_ms`.
pub fn jobs_table(jobs: &[JobListing], now_ms: u64, filtered: bool) -> String {
    if jobs.is_empty() {
        return if filtered {
            "no jobs match\n".to_owned()
        } else {
            "no jobs yet (`dispatch run` starts one)\n".to_owned()
        };
    }
    let rows: Vec<[String; 6]> = jobs
        .iter()
        .map(|job| {
            let submitted = if now_ms.saturating_sub(job.submitted_at_ms) < AGE_SHOWN_MS {
                render::ago(job.submitted_at_ms, now_ms)
            } else {
                render::time(job.submitted_at_ms)
            };
            [
                job.job_id.to_string(),
                submitted,
                job.submitted_by.clone(),
                job.target.clone(),
                render::cut(&job.command.join(" "), COMMAND_WIDTH),
                render::state_counts(&job.counts),
            ]
        })
        .collect();
    render::table(
        ["JOB ID", "SUBMITTED", "BY", "TARGET", "COMMAND", "STATES"],
        &rows,
    )
}

/// The JSON (and YAML) objects of the answer.
pub fn lines(jobs: &[JobListing]) -> Vec<JobLine<'_>> {
    jobs.iter().map(JobLine::of).collect()
}

/// One job of `--out json` (fields in the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobLine<'a> {
    pub job_id: Uuid,
    pub submitted_by: &'a str,
    pub submitted_at_ms: u64,
    pub origin: &'a str,
    pub target: &'a str,
    pub command: &'a [String],
    pub counts: Counts<'a>,
}

impl<'a> JobLine<'a> {
    pub fn of(job: &'a JobListing) -> Self {
        Self {
            job_id: job.job_id,
            submitted_by: &job.submitted_by,
            submitted_at_ms: job.submitted_at_ms,
            origin: &job.origin,
            target: &job.target,
            command: &job.command,
            counts: Counts(&job.counts),
        }
    }
}

/// Counts per state as an object `{"succeeded": 2, "queued": 1}`, in
/// [`MinionState::ALL`] order, states with none left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts<'a>(pub &'a [(MinionState, u32)]);

impl Serialize for Counts<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let totals: Vec<(MinionState, u32)> = MinionState::ALL
            .iter()
            .map(|state| {
                let n = self
                    .0
                    .iter()
                    .filter(|(s, _)| s == state)
                    .map(|(_, n)| n)
                    .sum();
                (*state, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let mut map = serializer.serialize_map(Some(totals.len()))?;
        for (state, n) in totals {
            map.serialize_entry(state.as_str(), &n)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    const JOB: Uuid = Uuid::from_u128(0x0190_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b);
    const NOW: u64 = 100 * 3600 * 1000;

    fn parse(words: &[&str]) -> Result<JobsPlan, String> {
        let cli = Cli::try_parse_from(["dispatch", "jobs"].iter().chain(words))
            .map_err(|e| e.to_string())?;
        match cli.command {
            Command::Jobs(args) => plan(args, NOW).map_err(|e| e.to_string()),
            other => panic!("not jobs: {other:?}"),
        }
    }

    fn listing(submitted_at_ms: u64, command: &str, counts: Vec<(MinionState, u32)>) -> JobListing {
        JobListing {
            job_id: JOB,
            submitted_by: "operator.local".to_owned(),
            submitted_at_ms,
            origin: "cli".to_owned(),
            target: "web.*".to_owned(),
            command: command.split(' ').map(str::to_owned).collect(),
            counts,
        }
    }

    #[test]
    fn defaults_are_twenty_jobs_without_filters() {
        let plan = parse(&[]).unwrap();
        assert_eq!(
            plan.query,
            JobQuery {
                limit: 20,
                since_ms: None,
                target: None,
                status: None
            }
        );
        assert_eq!(plan.out, ViewOutput::Text);
        assert!(!plan.filtered());
    }

    #[test]
    fn every_filter_lands_in_the_query() {
        let plan = parse(&[
            "--limit",
            "5",
            "--since",
            "1h",
            "--target",
            "web.*",
            "--status",
            "timed-out",
            "--out",
            "json",
        ])
        .unwrap();
        assert_eq!(
            plan.query,
            JobQuery {
                limit: 5,
                since_ms: Some(NOW - 3_600_000),
                target: Some("web.*".into()),
                status: Some(MinionState::TimedOut),
            }
        );
        assert_eq!(plan.out, ViewOutput::Json);
        assert!(plan.filtered());
    }

    #[test]
    fn a_bad_status_is_refused_with_the_valid_names() {
        let error = parse(&["--status", "done"]).unwrap_err();
        assert!(error.contains("unknown state 'done'"), "{error}");
        assert!(error.contains("succeeded, failed, refused"), "{error}");
    }

    #[test]
    fn bad_targets_limits_and_durations_are_refused() {
        let error = parse(&["--target", "Web*"]).unwrap_err();
        assert!(error.starts_with("invalid target 'Web*'"), "{error}");
        for bad in [
            &["--limit", "0"][..],
            &["--limit", "-1"],
            &["--limit", "10001"],
            &["--since", "yesterday"],
            &["--out", "xml"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["--target", "*"]).is_ok());
        assert!(parse(&["--target", "db.#"]).is_ok());
    }

    #[test]
    fn table_shows_ages_cut_commands_and_counts() {
        let long = "x".repeat(50);
        let jobs = [
            listing(
                NOW - 180_000,
                "uptime",
                vec![(MinionState::Succeeded, 2), (MinionState::Queued, 1)],
            ),
            listing(0, &long, vec![]),
        ];
        let table = jobs_table(&jobs, NOW, false);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("JOB ID"), "{table}");
        assert!(lines[1].starts_with(&format!("{JOB}  3m ago ")), "{table}");
        assert!(lines[1].contains("  web.*   uptime   "), "{table}");
        assert!(lines[1].ends_with("  2 succeeded, 1 queued"), "{table}");
        assert!(lines[2].contains("1970-01-01T00:00:00Z"), "{table}");
        assert!(
            lines[2].ends_with(&format!("{}…  -", "x".repeat(COMMAND_WIDTH - 1))),
            "{table}"
        );
    }

    #[test]
    fn an_empty_answer_says_whether_filters_hid_jobs() {
        assert!(jobs_table(&[], NOW, false).starts_with("no jobs yet"));
        assert_eq!(jobs_table(&[], NOW, true), "no jobs match\n");
    }

    #[test]
    fn commands_are_cut_to_one_line() {
        assert_eq!(render::cut("a\nb", 40), "a b");
        assert_eq!(render::cut("abcdef", 4), "abc…");
        assert_eq!(render::cut("abcd", 4), "abcd");
    }

    #[test]
    fn json_has_the_documented_fields_and_counts_by_state_name() {
        let jobs = [listing(
            5,
            "ls -la",
            vec![(MinionState::Queued, 1), (MinionState::Succeeded, 2)],
        )];
        let json = serde_json::to_value(lines(&jobs)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "job_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                "submitted_by": "operator.local",
                "submitted_at_ms": 5,
                "origin": "cli",
                "target": "web.*",
                "command": ["ls", "-la"],
                "counts": {"succeeded": 2, "queued": 1},
            }])
        );
        let text = serde_json::to_string(&Counts(&jobs[0].counts)).unwrap();
        assert_eq!(text, r#"{"succeeded":2,"queued":1}"#);
        let yaml = serde_yaml_ng::to_string(&lines(&jobs)).unwrap();
        assert!(
            yaml.contains("  counts:\n    succeeded: 2\n    queued: 1\n"),
            "{yaml}"
        );
    }
}
