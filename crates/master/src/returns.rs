//! One minion's return as every verb shows it: the JSON/YAML object ([`MinionRecord`])
//! of `dispatch run`, `dispatch job` and `dispatch events`, and the text block under the
//! minion's id ([`text_block`], [`outcome_text`]). The field list and the text format
//! are documented in [`run_cmd`](crate::run_cmd).

use dispatch_common::message::{ExecResult, Outcome, Reply};
use serde::Serialize;
use std::borrow::Cow;
use uuid::Uuid;

/// What became of a targeted minion: the `status` field of the JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Exited with status 0.
    Succeeded,
    /// Exited non-zero, was killed (by a signal or after `--exec-timeout`), or could not
    /// be started.
    Failed,
    /// The minion would not run it (expired, replayed, not for it…).
    Refused,
    /// The minion stopped while the command ran; it will not be run again.
    Interrupted,
    /// Online, but no return before the wait ended.
    TimedOut,
    /// Not connected: the command waits in its queue until the TTL.
    Offline,
    /// A rolling batch had not reached it when the wait ended.
    NotStarted,
}

impl Status {
    /// The status a return reports.
    pub fn of_outcome(outcome: &Outcome) -> Status {
        match outcome {
            Outcome::Finished(result) if result.succeeded() => Status::Succeeded,
            Outcome::Finished(_) => Status::Failed,
            Outcome::Refused { .. } => Status::Refused,
            Outcome::Interrupted => Status::Interrupted,
        }
    }
}

/// One minion's line of `--out json` (an item of `--out yaml`); the fields are
/// documented in [`run_cmd`](crate::run_cmd) and never renamed. `dispatch job` and
/// `dispatch events` print the same object with their own `status` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MinionRecord<S = Status> {
    pub minion: String,
    pub job_id: Uuid,
    pub status: S,
    #[serde(flatten)]
    pub output: ReturnOutput,
}

/// What a return carried, as text (empty or null for a minion with no return).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReturnOutput {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stdout_lossy: bool,
    pub stdout_truncated: bool,
    pub stderr: String,
    pub stderr_lossy: bool,
    pub stderr_truncated: bool,
    pub duration_ms: Option<u64>,
    pub exec_timed_out: bool,
    pub error: Option<String>,
    pub reason: Option<String>,
}

impl ReturnOutput {
    /// The fields of `outcome`.
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Finished(result) => {
                let (stdout, stdout_lossy) = utf8(&result.stdout);
                let (stderr, stderr_lossy) = utf8(&result.stderr);
                Self {
                    exit_code: result.exit_code,
                    signal: result.signal,
                    stdout: stdout.into_owned(),
                    stdout_lossy,
                    stdout_truncated: result.stdout_truncated,
                    stderr: stderr.into_owned(),
                    stderr_lossy,
                    stderr_truncated: result.stderr_truncated,
                    duration_ms: Some(result.duration_ms),
                    exec_timed_out: result.timed_out,
                    error: result.error.clone(),
                    reason: None,
                }
            }
            Outcome::Refused { reason } => Self {
                reason: Some(reason.clone()),
                ..Self::default()
            },
            Outcome::Interrupted => Self::default(),
        }
    }
}

impl MinionRecord {
    /// The record of a return, with `dispatch run`'s status.
    pub fn of_reply(reply: &Reply) -> Self {
        let status = Status::of_outcome(&reply.outcome);
        MinionRecord::new(&reply.minion, reply.job_id, status, Some(&reply.outcome))
    }
}

impl<S> MinionRecord<S> {
    /// The record of `minion` in `job_id` with `status`, and its return if there is one.
    pub fn new(minion: &str, job_id: Uuid, status: S, outcome: Option<&Outcome>) -> Self {
        Self {
            minion: minion.to_owned(),
            job_id,
            status,
            output: outcome.map(ReturnOutput::of).unwrap_or_default(),
        }
    }
}

/// Captured bytes as text, and whether invalid UTF-8 had to be replaced.
fn utf8(bytes: &[u8]) -> (Cow<'_, str>, bool) {
    let text = String::from_utf8_lossy(bytes);
    let lossy = matches!(text, Cow::Owned(_));
    (text, lossy)
}

/// One return as the text output shows it (see the module doc).
pub fn text_block(reply: &Reply) -> String {
    format!("{}:\n{}", reply.minion, outcome_text(&reply.outcome))
}

/// The lines of [`text_block`] under the minion's id: output indented by four spaces,
/// remarks in brackets indented by two.
pub fn outcome_text(outcome: &Outcome) -> String {
    let mut block = String::new();
    match outcome {
        Outcome::Refused { reason } => remark(&mut block, &format!("refused: {reason}")),
        Outcome::Interrupted => remark(
            &mut block,
            "interrupted: the minion stopped while the command ran; it will not be run again",
        ),
        Outcome::Finished(result) => {
            let (stdout, stdout_lossy) = utf8(&result.stdout);
            let (stderr, stderr_lossy) = utf8(&result.stderr);
            indent_into(&mut block, &stdout);
            if stdout_lossy {
                remark(&mut block, "stdout not UTF-8: invalid bytes replaced");
            }
            if result.stdout_truncated {
                remark(&mut block, "stdout truncated");
            }
            if !stderr.is_empty() {
                block += "  stderr:\n";
                indent_into(&mut block, &stderr);
            }
            if stderr_lossy {
                remark(&mut block, "stderr not UTF-8: invalid bytes replaced");
            }
            if result.stderr_truncated {
                remark(&mut block, "stderr truncated");
            }
            match failure(result) {
                Some(why) => remark(&mut block, &why),
                None if stdout.is_empty() && stderr.is_empty() => remark(&mut block, "no output"),
                None => {}
            }
        }
    }
    block
}

/// Appends a bracketed remark line, indented by two spaces.
fn remark(block: &mut String, text: &str) {
    *block += &format!("  [{text}]\n");
}

/// Why a finished command failed, in a few words; `None` when it succeeded.
pub fn failure(result: &ExecResult) -> Option<String> {
    if let Some(error) = &result.error {
        Some(format!("error: {error}"))
    } else if result.timed_out {
        Some("timed out: killed after --exec-timeout".to_owned())
    } else if let Some(signal) = result.signal {
        Some(format!("killed by signal {signal}"))
    } else {
        match result.exit_code {
            Some(0) => None,
            Some(code) => Some(format!("exit {code}")),
            None => Some("ended without an exit status".to_owned()),
        }
    }
}

/// Appends `text` line by line, indented by four spaces (empty lines stay empty).
fn indent_into(block: &mut String, text: &str) {
    for line in text.lines() {
        if line.is_empty() {
            block.push('\n');
        } else {
            *block += &format!("    {line}\n");
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Returns for the tests of the verbs that print them.

    use dispatch_common::message::{ExecResult, Outcome, Reply};
    use uuid::Uuid;

    pub const JOB: Uuid = Uuid::from_u128(0x0190_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b);

    pub fn finished(minion: &str, result: ExecResult) -> Reply {
        Reply {
            job_id: JOB,
            minion: minion.to_owned(),
            outcome: Outcome::Finished(result),
        }
    }

    pub fn exited(minion: &str, code: i32, stdout: &str) -> Reply {
        finished(
            minion,
            ExecResult {
                exit_code: Some(code),
                stdout: stdout.as_bytes().to_vec(),
                duration_ms: 12,
                ..Default::default()
            },
        )
    }

    pub fn refused(minion: &str) -> Reply {
        Reply {
            job_id: JOB,
            minion: minion.to_owned(),
            outcome: Outcome::Refused {
                reason: "expired".to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{exited, finished, refused};
    use super::*;

    #[test]
    fn status_of_each_outcome() {
        let status = |reply: Reply| Status::of_outcome(&reply.outcome);
        assert_eq!(status(exited("a", 0, "")), Status::Succeeded);
        assert_eq!(status(exited("a", 3, "")), Status::Failed);
        let not_found = ExecResult {
            exit_code: Some(0),
            error: Some("command not found: x".into()),
            ..Default::default()
        };
        assert_eq!(status(finished("a", not_found)), Status::Failed);
        let killed = ExecResult {
            signal: Some(9),
            ..Default::default()
        };
        assert_eq!(status(finished("a", killed)), Status::Failed);
        assert_eq!(status(refused("a")), Status::Refused);
        let interrupted = Reply {
            outcome: Outcome::Interrupted,
            ..refused("a")
        };
        assert_eq!(status(interrupted), Status::Interrupted);
    }

    #[test]
    fn json_of_a_return_has_the_documented_fields() {
        let reply = finished(
            "web.01",
            ExecResult {
                exit_code: Some(1),
                stdout: b"ok\n".to_vec(),
                stderr: b"bad \xff byte".to_vec(),
                stderr_truncated: true,
                duration_ms: 40,
                ..Default::default()
            },
        );
        let json = serde_json::to_value(MinionRecord::of_reply(&reply)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "minion": "web.01",
                "job_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                "status": "failed",
                "exit_code": 1,
                "signal": null,
                "stdout": "ok\n",
                "stdout_lossy": false,
                "stdout_truncated": false,
                "stderr": "bad \u{fffd} byte",
                "stderr_lossy": true,
                "stderr_truncated": true,
                "duration_ms": 40,
                "exec_timed_out": false,
                "error": null,
                "reason": null,
            })
        );
    }

    #[test]
    fn yaml_is_a_list_of_the_same_objects() {
        let yaml =
            serde_yaml_ng::to_string(&[MinionRecord::of_reply(&exited("a", 0, "hi\n"))]).unwrap();
        assert!(
            yaml.starts_with("- minion: a\n  job_id: 0190a1b2-"),
            "{yaml}"
        );
        assert!(yaml.contains("  status: succeeded\n"), "{yaml}");
    }

    #[test]
    fn text_of_a_success_is_its_output_indented_under_the_id() {
        assert_eq!(
            text_block(&exited("web.01", 0, "hello\n\nworld")),
            "web.01:\n    hello\n\n    world\n"
        );
        assert_eq!(
            text_block(&exited("web.01", 0, "")),
            "web.01:\n  [no output]\n"
        );
    }

    #[test]
    fn text_of_a_failure_marks_stderr_and_the_exit_code() {
        let reply = finished(
            "web.02",
            ExecResult {
                exit_code: Some(3),
                stdout: b"part".to_vec(),
                stdout_truncated: true,
                stderr: b"oops\n".to_vec(),
                ..Default::default()
            },
        );
        assert_eq!(
            text_block(&reply),
            "web.02:\n    part\n  [stdout truncated]\n  stderr:\n    oops\n  [exit 3]\n"
        );
    }

    #[test]
    fn text_names_signals_timeouts_errors_refusals_and_interruptions() {
        let block = |result: ExecResult| text_block(&finished("m", result));
        let killed = ExecResult {
            signal: Some(9),
            ..Default::default()
        };
        assert_eq!(block(killed), "m:\n  [killed by signal 9]\n");
        let timed_out = ExecResult {
            signal: Some(15),
            timed_out: true,
            ..Default::default()
        };
        assert_eq!(
            block(timed_out),
            "m:\n  [timed out: killed after --exec-timeout]\n"
        );
        let not_found = ExecResult {
            error: Some("command not found: x".into()),
            ..Default::default()
        };
        assert_eq!(block(not_found), "m:\n  [error: command not found: x]\n");
        assert_eq!(text_block(&refused("m")), "m:\n  [refused: expired]\n");
        let interrupted = Reply {
            outcome: Outcome::Interrupted,
            ..refused("m")
        };
        assert!(text_block(&interrupted).starts_with("m:\n  [interrupted: "));
    }
}
