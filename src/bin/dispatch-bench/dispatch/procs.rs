//! Processes of a dispatch-level scenario: the `dispatch` master daemon and
//! `dispatch-minion`s started from beside this executable in a temporary directory, and
//! timed invocations of the real `dispatch` CLI against them.
//!
//! Everything started here is stopped by [`Cluster::stop`] or, if the run is abandoned,
//! by `Drop` (SIGKILL); the temporary directory goes with it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// Longest wait for the master's `listening on ADDR` line.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for every minion to be accepted and up.
const UP_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest a single timed CLI invocation may take before it counts as a failure.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// The two executables a cluster needs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dispatch: PathBuf,
    pub minion: PathBuf,
}

impl Binaries {
    /// `dispatch` and `dispatch-minion` in `dir`, or beside this executable (built first
    /// under cargo, like the embedded broker).
    pub fn find(dir: Option<&Path>) -> Result<Self> {
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => crate::servers::sibling_dir(&["dispatch", "dispatch-minion"])?,
        };
        let binaries = Binaries {
            dispatch: dir.join("dispatch"),
            minion: dir.join("dispatch-minion"),
        };
        for bin in [&binaries.dispatch, &binaries.minion] {
            if !bin.is_file() {
                bail!(
                    "{} does not exist; build it with `cargo build --release --bins` or pass --dispatch-bin DIR",
                    bin.display()
                );
            }
        }
        Ok(binaries)
    }
}

/// A fresh directory under the system temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "dispatch-bench-{label}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Process groups of the daemons alive now, for [`kill_all`].
static GROUPS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn groups() -> std::sync::MutexGuard<'static, Vec<u32>> {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// SIGKILL to the process group of every daemon still running (Ctrl-C).
pub fn kill_all() {
    for pgid in groups().drain(..) {
        signal_group(pgid, "KILL");
    }
}

/// A child process in its own process group, killed on drop.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    child: Child,
    log: Option<PathBuf>,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the end of its log, when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{} exited ({status}){}",
                self.name,
                log_tail(self.log.as_deref())
            );
        }
        Ok(())
    }

    /// SIGTERM to its process group, up to 10 s for the leader to exit, then SIGKILL to
    /// the group (Salt's daemons are trees of processes).
    pub fn stop(mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal_group(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Drop kills whatever is left of the group.
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        groups().retain(|&pgid| pgid != self.child.id());
        signal_group(self.child.id(), "KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` to the process group `pgid` with kill(1); the bench links no libc.
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last lines of a log file, for error messages.
pub fn log_tail(log: Option<&Path>) -> String {
    let Some(log) = log else {
        return String::new();
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n    ");
    if tail.is_empty() {
        String::new()
    } else {
        format!("; end of {}:\n    {tail}", log.display())
    }
}

/// Starts `command` in its own process group with stdin closed and stdout and stderr
/// appended to `log`.
pub fn spawn_logged(name: String, mut command: Command, log: &Path) -> Result<Daemon> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    groups().push(child.id());
    Ok(Daemon {
        name,
        child,
        log: Some(log.to_path_buf()),
    })
}

/// A master and its minions, all local processes.
#[derive(Debug)]
pub struct Cluster {
    pub bins: Binaries,
    pub master: Daemon,
    pub minions: Vec<Daemon>,
    /// `amqp://ADDR` of the master's embedded broker.
    pub url: String,
    pub data_dir: PathBuf,
    dir: TempDir,
}

impl Cluster {
    /// `dispatch --data-dir DIR/master master --listen 127.0.0.1:0`, ready once it prints
    /// its address. `prepare` runs on the data dir first (e.g. to fill the job store).
    pub fn start_master(bins: &Binaries, label: &str) -> Result<Self> {
        let dir = TempDir::new(label)?;
        let data_dir = dir.path().join("master");
        std::fs::create_dir_all(&data_dir)?;
        Self::start_master_in(bins, dir, data_dir)
    }

    /// As [`Cluster::start_master`], on a data dir that already exists inside `dir`.
    pub fn start_master_in(bins: &Binaries, dir: TempDir, data_dir: PathBuf) -> Result<Self> {
        let log = dir.path().join("master.log");
        let stderr = std::fs::File::create(&log)?;
        let child = Command::new(&bins.dispatch)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["master", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bins.dispatch.display()))?;
        groups().push(child.id());
        let mut master = Daemon {
            name: "dispatch master".to_owned(),
            child,
            log: Some(log),
        };
        let stdout = master.child.stdout.take().context("master stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads stdout to its end so the master never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.trim().strip_prefix(dispatch_common::READY_LINE_PREFIX)
                {
                    let _ = tx.send(address.to_owned());
                }
            }
        });
        let address = match rx.recv_timeout(LISTEN_TIMEOUT) {
            Ok(address) => address,
            Err(_) => {
                master.check_alive()?;
                bail!("the master printed no `listening on ADDR` within {LISTEN_TIMEOUT:?}");
            }
        };
        Ok(Cluster {
            bins: bins.clone(),
            master,
            minions: Vec::new(),
            url: format!("amqp://{address}"),
            data_dir,
            dir,
        })
    }

    /// Starts `count` minions `bench.01` … and accepts their keys; returns once the
    /// master lists all of them accepted and up.
    pub fn start_minions(&mut self, count: usize) -> Result<()> {
        let ids: Vec<String> = (1..=count).map(|n| format!("bench.{n:02}")).collect();
        for id in &ids {
            let data_dir = self.dir.path().join(id);
            std::fs::create_dir_all(&data_dir)?;
            let mut command = Command::new(&self.bins.minion);
            command
                .args(["--master", &self.url, "--id", id, "--data-dir"])
                .arg(&data_dir)
                .args(["--reconnect-max", "200ms"]);
            let log = self.dir.path().join(format!("{id}.log"));
            self.minions.push(spawn_logged(
                format!("dispatch-minion {id}"),
                command,
                &log,
            )?);
        }
        let deadline = Instant::now() + UP_TIMEOUT;
        loop {
            self.master.check_alive()?;
            for minion in &mut self.minions {
                minion.check_alive()?;
            }
            let keys = self.cli(&["key", "list", "--out", "json"])?;
            let accepted = json_objects_with(&keys.stdout, "state", "\"accepted\"");
            let pending = json_objects_with(&keys.stdout, "state", "\"pending\"");
            if ids.iter().any(|id| pending.contains(id)) {
                self.cli(&["key", "accept", "--all"])?;
            }
            let last = if ids.iter().all(|id| accepted.contains(id)) {
                let minions = self.cli(&["minions", "--out", "json"])?;
                let up = json_objects_with(&minions.stdout, "up", "true");
                if ids.iter().all(|id| up.contains(id)) {
                    return Ok(());
                }
                format!(
                    "{} of {count} up",
                    ids.iter().filter(|id| up.contains(id)).count()
                )
            } else {
                format!(
                    "{} of {count} accepted",
                    ids.iter().filter(|id| accepted.contains(id)).count()
                )
            };
            if Instant::now() >= deadline {
                bail!("minions not ready within {UP_TIMEOUT:?}: {last}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `dispatch --data-dir DATA --master URL ARGS…`, run to completion.
    pub fn cli(&self, args: &[&str]) -> Result<Invocation> {
        let mut command = Command::new(&self.bins.dispatch);
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--master", &self.url])
            .args(args);
        invoke(command, CLI_TIMEOUT).with_context(|| format!("dispatch {}", args.join(" ")))
    }

    /// `dispatch ARGS…`, timed; fails unless it exits with `expected`.
    pub fn timed(&self, args: &[&str], expected: i32) -> Result<Duration> {
        let run = self.cli(args)?;
        if run.code != Some(expected) {
            bail!(
                "`dispatch {}` exited with {:?}, expected {expected}: {}{}",
                args.join(" "),
                run.code,
                run.stdout.trim(),
                run.stderr.trim()
            );
        }
        Ok(run.wall)
    }

    /// Stops the minions, then the master, then removes the directory.
    pub fn stop(self) {
        for minion in self.minions {
            minion.stop();
        }
        self.master.stop();
    }
}

/// One finished CLI process.
#[derive(Debug)]
pub struct Invocation {
    pub wall: Duration,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` with stdout and stderr captured (drained by threads, so a chatty
/// process never blocks), killing it after `limit`. The wall time runs from spawn to
/// exit.
pub fn invoke(mut command: Command, limit: Duration) -> Result<Invocation> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().context("spawning")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {limit:?}; killed");
        }
        // Short enough not to inflate millisecond wall times noticeably.
        std::thread::sleep(Duration::from_micros(200));
    };
    let wall = started.elapsed();
    Ok(Invocation {
        wall,
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The `id`s of the objects of a JSON array of flat objects (as `dispatch key list` and
/// `dispatch minions` print them) whose field `field` has the JSON text `value`.
/// Enough for ids, which cannot hold quotes or braces; not a general JSON reader.
pub fn json_objects_with(json: &str, field: &str, value: &str) -> Vec<String> {
    json.split('}')
        .filter(|object| json_field(object, field).as_deref() == Some(value))
        .filter_map(|object| json_field(object, "id"))
        .map(|id| id.trim_matches('"').to_owned())
        .collect()
}

/// The raw JSON text of `field`'s scalar value in `object`.
fn json_field(object: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\"");
    let start = object.find(&key)? + key.len();
    let rest = object[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"')? + 2
    } else {
        rest.find([',', '\n', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim().to_owned())
}

/// Wall times of repeated invocations.
#[derive(Debug, Clone)]
pub struct Walls {
    sorted: Vec<Duration>,
}

impl Walls {
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Walls { sorted: samples }
    }

    /// The nearest-rank percentile `p` (0–100), in milliseconds.
    /// Samples.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.sorted.len()) - 1;
        self.sorted[index].as_secs_f64() * 1e3
    }

    pub fn p50_ms(&self) -> f64 {
        self.percentile_ms(50.0)
    }

    pub fn p90_ms(&self) -> f64 {
        self.percentile_ms(90.0)
    }

    pub fn max_ms(&self) -> f64 {
        self.percentile_ms(100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_picked_by_a_field() {
        let json = r#"[
  {
    "id": "bench.01",
    "groups": [],
    "up": true,
    "last_seen_ms": 1
  },
  {
    "id": "bench.02",
    "groups": ["a", "b"],
    "up": false,
    "version": null
  }
]"#;
        assert_eq!(json_objects_with(json, "up", "true"), vec!["bench.01"]);
        assert_eq!(json_objects_with(json, "up", "false"), vec!["bench.02"]);
        let compact = r#"[{"id":"m.1","state":"accepted"},{"id":"m.2","state":"pending"}]"#;
        assert_eq!(
            json_objects_with(compact, "state", "\"accepted\""),
            vec!["m.1"]
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let walls = Walls::new((1..=20).rev().map(Duration::from_millis).collect());
        assert_eq!(walls.p50_ms(), 10.0);
        assert_eq!(walls.p90_ms(), 18.0);
        assert_eq!(walls.max_ms(), 20.0);
    }
}
