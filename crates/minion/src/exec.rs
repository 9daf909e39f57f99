//! Running one job: spawn, capture, time out, kill.
//!
//! The program is run directly (`argv[0]` looked up in `PATH`) or, when the command
//! says `shell`, as `/bin/sh -c "argv joined by spaces"`, with the command's extra
//! environment and working directory, stdin from `/dev/null`, and in a process group of
//! its own, so that a timeout (or a shutdown) reaches every process it started: SIGTERM
//! to the group, then SIGKILL after [`KILL_GRACE`].
//!
//! stdout and stderr are read concurrently with the run, each kept up to the capture
//! limit and marked truncated beyond it, but always read to the end so a chatty child
//! never blocks on a full pipe. Reading stops at end of file, or once the group leader
//! has exited and the pipe stayed quiet for [`PIPE_QUIET_GRACE`] (a background
//! grandchild may hold it open), or at the latest [`PIPE_DRAIN_MAX`] after the exit.

use crate::config::{KILL_GRACE, PIPE_DRAIN_MAX, PIPE_QUIET_GRACE};
use dispatch_common::message::{Exec, ExecResult};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// The shell of `shell` commands.
const SHELL: &str = "/bin/sh";

/// Size of one read from a pipe.
const READ_CHUNK: usize = 16 * 1024;

/// How a run ended, besides its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The command ran to its end (or its timeout, or could not start).
    Completed,
    /// `stop` fired: the process group was killed before the command ended.
    Stopped,
}

/// Runs `exec`, capturing at most `max_output` bytes of each stream. When `stop`
/// completes first, the process group is killed and the run ends as
/// [`Ending::Stopped`]. Never fails: a command that cannot start is a result with
/// `error` set.
///
/// Cancel-safety: dropping the future leaves the process group running (use `stop`).
pub async fn run(
    exec: &Exec,
    max_output: usize,
    stop: impl Future<Output = ()>,
) -> (ExecResult, Ending) {
    let started = Instant::now();
    let failed = |error: String| ExecResult {
        error: Some(error),
        duration_ms: started.elapsed().as_millis() as u64,
        ..ExecResult::default()
    };
    let mut command = match build(exec) {
        Ok(command) => command,
        Err(error) => return (failed(error), Ending::Completed),
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return (failed(spawn_error(exec, &e)), Ending::Completed),
    };
    let Some(pgid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
    else {
        return (
            failed("the command's process vanished at start".into()),
            Ending::Completed,
        );
    };
    let (exited_tx, exited_rx) = watch::channel(false);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let supervise = async {
        let outcome = supervise(&mut child, pgid, exec.timeout_ms, stop).await;
        let _ = exited_tx.send(true);
        outcome
    };
    let ((status, timed_out, ending), (stdout, stdout_truncated), (stderr, stderr_truncated)) = tokio::join!(
        supervise,
        drain(stdout, max_output, exited_rx.clone()),
        drain(stderr, max_output, exited_rx),
    );
    let mut result = ExecResult {
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
        ..ExecResult::default()
    };
    match status {
        Ok(status) => {
            result.exit_code = status.code();
            result.signal = status.signal();
        }
        Err(e) => result.error = Some(format!("cannot wait for the command: {e}")),
    }
    (result, ending)
}

/// The process to start.
fn build(exec: &Exec) -> Result<Command, String> {
    let Some(program) = exec.argv.first() else {
        return Err("empty command".into());
    };
    let mut command = if exec.shell {
        let mut command = Command::new(SHELL);
        command.arg("-c").arg(exec.argv.join(" "));
        command
    } else {
        let mut command = Command::new(program);
        command.args(&exec.argv[1..]);
        command
    };
    command
        .envs(exec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(cwd) = &exec.cwd {
        command.current_dir(cwd);
    }
    Ok(command)
}

/// The `error` of a command that could not start, in words a user can act on.
fn spawn_error(exec: &Exec, error: &std::io::Error) -> String {
    let program = if exec.shell {
        SHELL
    } else {
        exec.argv[0].as_str()
    };
    if let Some(cwd) = &exec.cwd
        && !Path::new(cwd).is_dir()
    {
        return format!("working directory not found: {cwd}");
    }
    match error.kind() {
        std::io::ErrorKind::NotFound => format!("command not found: {program}"),
        std::io::ErrorKind::PermissionDenied => format!("permission denied: {program}"),
        _ => format!("cannot start {program}: {error}"),
    }
}

/// Waits for the leader, killing the group on timeout or `stop`. Returns the status,
/// whether it timed out, and how the run ended.
async fn supervise(
    child: &mut Child,
    pgid: Pid,
    timeout_ms: Option<u64>,
    stop: impl Future<Output = ()>,
) -> (std::io::Result<ExitStatus>, bool, Ending) {
    let timeout = async {
        match timeout_ms {
            Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        status = child.wait() => (status, false, Ending::Completed),
        () = timeout => (terminate(child, pgid).await, true, Ending::Completed),
        () = stop => (terminate(child, pgid).await, false, Ending::Stopped),
    }
}

/// SIGTERM to the group, up to [`KILL_GRACE`] for the leader to exit, then SIGKILL to
/// whatever is left of the group.
async fn terminate(child: &mut Child, pgid: Pid) -> std::io::Result<ExitStatus> {
    signal_group(pgid, Signal::SIGTERM);
    let status = tokio::time::timeout(KILL_GRACE, child.wait()).await;
    signal_group(pgid, Signal::SIGKILL);
    match status {
        Ok(status) => status,
        Err(_) => child.wait().await,
    }
}

fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid = pgid.as_raw(), %signal, "cannot signal the job's process group: {e}")
        }
    }
}

/// Reads `pipe` to its end (see the module doc for when it stops early), keeping at
/// most `max` bytes. Returns the bytes and whether more were produced.
async fn drain(
    pipe: Option<impl AsyncRead + Unpin>,
    max: usize,
    mut exited: watch::Receiver<bool>,
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let Some(mut pipe) = pipe else {
        return (kept, truncated);
    };
    let mut chunk = vec![0; READ_CHUNK];
    let mut exited_at: Option<Instant> = None;
    loop {
        if exited_at.is_none() && *exited.borrow() {
            exited_at = Some(Instant::now());
        }
        let read = match exited_at {
            Some(at) => {
                let left = PIPE_DRAIN_MAX.saturating_sub(at.elapsed());
                match tokio::time::timeout(PIPE_QUIET_GRACE.min(left), pipe.read(&mut chunk)).await
                {
                    Ok(read) => read,
                    Err(_) => break,
                }
            }
            None => tokio::select! {
                read = pipe.read(&mut chunk) => read,
                changed = exited.changed() => {
                    if changed.is_err() {
                        exited_at = Some(Instant::now());
                    }
                    continue;
                }
            },
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
                truncated |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!("reading a job's output failed: {e}");
                break;
            }
        }
    }
    (kept, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(20);

    fn exec(argv: &[&str]) -> Exec {
        Exec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            shell: false,
            env: vec![],
            cwd: None,
            timeout_ms: None,
        }
    }

    async fn run_bounded(exec: &Exec, max_output: usize) -> ExecResult {
        let (result, ending) =
            tokio::time::timeout(LIMIT, run(exec, max_output, std::future::pending()))
                .await
                .expect("the run ends in time");
        assert_eq!(ending, Ending::Completed);
        result
    }

    #[tokio::test]
    async fn the_exit_code_is_reported() {
        let result = run_bounded(&exec(&["sh", "-c", "exit 3"]), 1024).await;
        assert_eq!(result.exit_code, Some(3));
        assert_eq!(result.signal, None);
        assert!(!result.succeeded() && !result.timed_out && result.error.is_none());
    }

    #[tokio::test]
    async fn stdout_and_stderr_are_captured() {
        let result = run_bounded(&exec(&["sh", "-c", "echo hello; echo oops >&2"]), 1024).await;
        assert!(result.succeeded());
        assert_eq!(result.stdout, b"hello\n");
        assert_eq!(result.stderr, b"oops\n");
        assert!(!result.stdout_truncated && !result.stderr_truncated);
    }

    #[tokio::test]
    async fn a_large_output_is_truncated_and_the_child_is_not_blocked() {
        // 4 MiB through a 64 KiB pipe: only a reader that drains past the limit lets the
        // child finish.
        let result = run_bounded(
            &exec(&["sh", "-c", "head -c 4194304 /dev/zero; echo done >&2"]),
            1000,
        )
        .await;
        assert!(result.succeeded(), "{result:?}");
        assert_eq!(result.stdout.len(), 1000);
        assert!(result.stdout_truncated);
        assert_eq!(result.stderr, b"done\n");
        assert!(!result.stderr_truncated);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let mut job = exec(&["sh", "-c", "sleep 30 & sleep 30"]);
        job.timeout_ms = Some(300);
        let started = Instant::now();
        let result = run_bounded(&job, 1024).await;
        assert!(result.timed_out);
        assert_eq!(result.signal, Some(Signal::SIGTERM as i32));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
        let mut job = exec(&["sh", "-c", "trap '' TERM; sleep 30"]);
        job.timeout_ms = Some(100);
        let started = Instant::now();
        let result = run_bounded(&job, 1024).await;
        assert!(result.timed_out);
        assert_eq!(result.signal, Some(Signal::SIGKILL as i32));
        assert!(started.elapsed() >= KILL_GRACE);
        assert!(started.elapsed() < KILL_GRACE + Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_background_grandchild_holding_the_pipe_does_not_hold_the_job() {
        let started = Instant::now();
        let result = run_bounded(&exec(&["sh", "-c", "echo before; sleep 30 &"]), 1024).await;
        assert_eq!(result.exit_code, Some(0));
        assert_eq!(result.stdout, b"before\n");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_reported_as_command_not_found() {
        let result = run_bounded(&exec(&["dispatch-no-such-program", "x"]), 1024).await;
        assert_eq!(
            result.error.as_deref(),
            Some("command not found: dispatch-no-such-program")
        );
        assert_eq!(result.exit_code, None);
        assert!(!result.succeeded());
    }

    #[tokio::test]
    async fn a_missing_working_directory_is_reported_as_such() {
        let mut job = exec(&["true"]);
        job.cwd = Some("/nonexistent/dispatch/dir".into());
        let result = run_bounded(&job, 1024).await;
        assert_eq!(
            result.error.as_deref(),
            Some("working directory not found: /nonexistent/dispatch/dir")
        );
    }

    #[tokio::test]
    async fn shell_mode_joins_the_words_into_one_line() {
        let mut job = exec(&["echo", "$GREETING", "|", "tr", "a-z", "A-Z"]);
        job.shell = true;
        job.env = vec![("GREETING".into(), "hi there".into())];
        let result = run_bounded(&job, 1024).await;
        assert!(result.succeeded(), "{result:?}");
        assert_eq!(result.stdout, b"HI THERE\n");
    }

    #[tokio::test]
    async fn env_and_cwd_come_from_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let mut job = exec(&["sh", "-c", "pwd; echo $X"]);
        job.cwd = Some(dir.path().to_str().unwrap().to_owned());
        job.env = vec![("X".into(), "42".into())];
        let result = run_bounded(&job, 1024).await;
        let expected = format!("{}\n42\n", dir.path().canonicalize().unwrap().display());
        assert_eq!(String::from_utf8_lossy(&result.stdout), expected);
    }

    #[tokio::test]
    async fn stop_kills_a_running_job_and_says_so() {
        let job = exec(&["sleep", "30"]);
        let stop = tokio::time::sleep(Duration::from_millis(100));
        let (result, ending) = tokio::time::timeout(LIMIT, run(&job, 1024, stop))
            .await
            .unwrap();
        assert_eq!(ending, Ending::Stopped);
        assert!(!result.timed_out);
        assert!(result.signal.is_some());
    }
}
