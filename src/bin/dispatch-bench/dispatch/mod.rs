//! Dispatch-level scenarios: dispatch itself measured from outside, the way an operator
//! meets it — real `dispatch` CLI processes against a real master daemon and real
//! `dispatch-minion` processes, every one started from beside this executable in a
//! temporary directory — and, with `--compare-salt`, Salt doing the same on this machine.
//!
//! These need no broker target: the master embeds its own.

mod job_lookup;
pub mod procs;
mod run_wall;
mod salt;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::ValueEnum;

use procs::Walls;

/// The dispatch-level scenarios, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DispatchScenario {
    /// Wall time of `dispatch run '*' true` to local minion processes, minion and master
    /// RSS (and `salt '*' test.ping` with --compare-salt).
    RunWall,
    /// Wall time of `dispatch job JID` and `dispatch jobs --limit 20` with a store of
    /// --lookup-jobs jobs.
    JobLookup,
}

impl DispatchScenario {
    pub const ALL: [DispatchScenario; 2] = [DispatchScenario::RunWall, DispatchScenario::JobLookup];

    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        match self {
            DispatchScenario::RunWall => "run-wall",
            DispatchScenario::JobLookup => "job-lookup",
        }
    }

    pub fn title(self, ctx: &DispatchCtx) -> String {
        match self {
            DispatchScenario::RunWall => {
                format!("`dispatch run '*' true`, {} minions", ctx.minions)
            }
            DispatchScenario::JobLookup => format!(
                "`dispatch job` / `jobs`, {} stored jobs",
                crate::report::group_thousands(ctx.lookup_jobs as i64)
            ),
        }
    }

    /// How long the scenario may take in all, set-up and teardown included.
    fn time_limit(self, ctx: &DispatchCtx) -> Duration {
        let runs = (ctx.runs + ctx.warmup_runs) as u64;
        match self {
            // Start-up of both clusters, then every run at up to 10 s.
            DispatchScenario::RunWall => Duration::from_secs(600 + 2 * 10 * runs),
            // Filling at no less than 500 jobs/s, then 4 kinds of lookups.
            DispatchScenario::JobLookup => {
                Duration::from_secs(300 + ctx.lookup_jobs / 500 + 4 * 10 * runs)
            }
        }
    }

    fn run(self, ctx: &DispatchCtx) -> Result<DispatchOutcome> {
        match self {
            DispatchScenario::RunWall => run_wall::run(ctx).map(DispatchOutcome::RunWall),
            DispatchScenario::JobLookup => job_lookup::run(ctx).map(DispatchOutcome::JobLookup),
        }
    }
}

/// The pause between the last timed run and reading the daemons' memory.
pub const SETTLE: Duration = Duration::from_secs(2);

/// What the dispatch scenarios need to know.
#[derive(Debug, Clone)]
pub struct DispatchCtx {
    /// The directory holding `dispatch` and `dispatch-minion`; `None`: beside this
    /// executable.
    pub bin_dir: Option<PathBuf>,
    pub minions: usize,
    /// Timed invocations of each command.
    pub runs: usize,
    /// Untimed invocations before them.
    pub warmup_runs: usize,
    pub lookup_jobs: u64,
    /// The directory holding `salt`, `salt-master` and `salt-minion`, when Salt is to
    /// run side by side.
    pub salt_bin: Option<PathBuf>,
}

/// What `run-wall` measured for one system.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Wall time of each timed invocation.
    pub walls: Walls,
    /// VmRSS of each minion's process tree, KiB, after the timed runs.
    pub minion_rss_kib: Vec<u64>,
    /// VmRSS of the master's process tree, KiB.
    pub master_rss_kib: u64,
    /// Processes in the master's tree.
    pub master_processes: usize,
    /// Processes in each minion's tree.
    pub minion_processes: usize,
    /// The version that ran (Salt's `--version`).
    pub version: Option<String>,
    /// Runs (warm-up or timed) that did not exit 0, with what they printed; not timed.
    pub failed: Vec<String>,
}

impl Fleet {
    pub fn minion_rss_mean_kib(&self) -> f64 {
        self.minion_rss_kib.iter().sum::<u64>() as f64 / self.minion_rss_kib.len().max(1) as f64
    }

    pub fn minion_rss_max_kib(&self) -> f64 {
        self.minion_rss_kib.iter().copied().max().unwrap_or(0) as f64
    }
}

/// What `run-wall` measured: dispatch, and Salt when it was asked for.
#[derive(Debug, Clone)]
pub struct RunWall {
    pub dispatch: Result<Fleet, String>,
    /// `None`: not asked for; `Some(Err)`: asked for, but it could not run.
    pub salt: Option<Result<Fleet, String>>,
}

/// What `job-lookup` measured.
#[derive(Debug, Clone)]
pub struct JobLookup {
    pub jobs: u64,
    /// Time to fill the store through the master's library.
    pub fill: Duration,
    pub by_prefix: Walls,
    pub by_suffix: Walls,
    pub by_id: Walls,
    pub list: Walls,
    /// Size of `jobs.sqlite` (with its WAL), bytes.
    pub store_bytes: u64,
    /// The master's VmRSS after the lookups, KiB.
    pub master_rss_kib: u64,
}

#[derive(Debug, Clone)]
pub enum DispatchOutcome {
    RunWall(RunWall),
    JobLookup(JobLookup),
}

/// One dispatch scenario's line in the report.
#[derive(Debug)]
pub struct DispatchMeasured {
    pub title: String,
    pub outcome: Result<DispatchOutcome, String>,
}

/// Runs every dispatch scenario of the plan in turn, each bounded in time; a failed one
/// becomes an error cell and the others still run.
pub async fn run_all(scenarios: &[DispatchScenario], ctx: &DispatchCtx) -> Vec<DispatchMeasured> {
    let mut results = Vec::new();
    for &scenario in scenarios {
        let title = scenario.title(ctx);
        eprintln!("   {title} ...");
        let limit = scenario.time_limit(ctx);
        let task_ctx = ctx.clone();
        // The processes are driven by blocking code; dropping the task's values (on an
        // error or a panic) kills them.
        let task = tokio::task::spawn_blocking(move || scenario.run(&task_ctx));
        let outcome = match tokio::time::timeout(limit, task).await {
            Ok(Ok(Ok(outcome))) => Ok(outcome),
            Ok(Ok(Err(err))) => Err(format!("{err:#}")),
            Ok(Err(err)) => Err(format!("the scenario panicked: {err}")),
            Err(_) => Err(format!("did not finish within {limit:?}")),
        };
        if let Err(err) = &outcome {
            eprintln!("     failed: {err}");
        }
        results.push(DispatchMeasured { title, outcome });
    }
    results
}

/// VmRSS in KiB of `pid` and every process descended from it, and how many processes
/// that is (Salt's daemons are trees of Python processes; a dispatch daemon is one).
pub fn tree_rss_kib(pid: u32) -> Result<(u64, usize)> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Field 4 (ppid) is the second after the command name's closing parenthesis.
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((child, ppid));
        }
    }
    let mut tree = vec![pid];
    let mut index = 0;
    while index < tree.len() {
        let parent = tree[index];
        tree.extend(
            parents
                .iter()
                .filter(|&&(_, ppid)| ppid == parent)
                .map(|&(child, _)| child),
        );
        index += 1;
    }
    let mut total = crate::probe::Probe::new(pid)?.rss_kib()?;
    for &child in &tree[1..] {
        // A child may exit between the listing and the reading.
        if let Ok(rss) = crate::probe::Probe::new(child).and_then(|p| p.rss_kib()) {
            total += rss;
        }
    }
    Ok((total, tree.len()))
}
