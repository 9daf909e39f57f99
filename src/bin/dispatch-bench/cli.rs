//! The command line: [`Args`] as typed, turned into a checked [`Plan`] before any I/O.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;

use crate::dispatch::DispatchScenario;
use crate::scenarios::Scenario;

/// Measure an AMQP 0-9-1 broker with the lapin client: transient 1→1 throughput, fan-out
/// to many queues (wildcard binding and BCC header), request/reply latency, memory per
/// idle connection, persistent publishing with confirms, and a backlog of persistent
/// messages queued with no consumer (broker memory and disk use), then drained. Broker CPU comes from /proc/PID/stat (100 clock ticks per second, the
/// Linux USER_HZ), broker memory from /proc/PID/status (VmRSS).
///
/// Dispatch itself (no broker flag needed): `--only run-wall,job-lookup` or `--dispatch`
/// start the master and minions from beside this executable and time the real `dispatch`
/// CLI (`run '*' true` to --minions minions; `job JID` and `jobs` over --lookup-jobs
/// stored jobs); `--compare-salt` times `salt '*' test.ping` beside it.
#[derive(Debug, Parser)]
#[command(name = "dispatch-bench", version)]
pub struct Args {
    /// Broker to measure, e.g. amqp://guest:guest@127.0.0.1:5672/%2f
    #[arg(long, value_name = "URL")]
    url: Option<String>,

    /// Process id of the broker behind --url, for CPU and memory figures.
    #[arg(long, value_name = "PID", requires = "url")]
    broker_pid: Option<u32>,

    /// Start the embedded broker (dispatch-broker beside this executable) on port 0 and
    /// measure it.
    #[arg(long)]
    spawn_embedded: bool,

    /// Also start a private RabbitMQ on 127.0.0.1 and run every scenario against both,
    /// printing a markdown table with ratios (embedded or --url / RabbitMQ) first.
    #[arg(long)]
    compare_rabbitmq: bool,

    /// The dispatch-broker executable for --spawn-embedded and --compare-rabbitmq.
    #[arg(long, value_name = "PATH")]
    broker_bin: Option<PathBuf>,

    /// Measured window of each rate and latency scenario.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Traffic before each measured window, not counted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,

    /// Run only these scenarios (repeat or separate with commas). Broker scenarios:
    /// transient-auto-ack, transient-manual-ack, fanout-topic, fanout-bcc, rpc,
    /// idle-memory, persistent-confirms, persistent-backlog; dispatch scenarios: run-wall,
    /// job-lookup.
    #[arg(long, value_name = "NAME", value_delimiter = ',', value_parser = parse_selected)]
    only: Vec<Selected>,

    /// Run every dispatch scenario (run-wall, job-lookup): alone, or after the broker
    /// scenarios when a broker is named.
    #[arg(long)]
    dispatch: bool,

    /// The directory holding `dispatch` and `dispatch-minion` (default: beside this
    /// executable).
    #[arg(long, value_name = "DIR")]
    dispatch_bin: Option<PathBuf>,

    /// Minion processes started by run-wall.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=200))]
    minions: u32,

    /// Timed CLI invocations of each command in the dispatch scenarios.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    runs: u32,

    /// Untimed CLI invocations before them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=1000))]
    warmup_runs: u32,

    /// Jobs stored before job-lookup starts the master.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    lookup_jobs: u64,

    /// Also start a private salt-master and --minions salt-minions (as this user, in a
    /// temporary directory, on 127.0.0.1) and time `salt '*' test.ping` beside run-wall.
    #[arg(long)]
    compare_salt: bool,

    /// The directory holding `salt`, `salt-master` and `salt-minion` (default: where
    /// `salt-master` is on PATH), e.g. /tmp/saltvenv/bin after
    /// `python3 -m venv /tmp/saltvenv && /tmp/saltvenv/bin/pip install salt`.
    #[arg(long, value_name = "DIR", requires = "compare_salt")]
    salt_bin: Option<PathBuf>,

    /// Print a markdown table instead of plain text.
    #[arg(long)]
    markdown: bool,

    /// Queues in the fan-out scenarios.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    fanout_queues: u32,

    /// Connections opened by the idle-memory scenario.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    idle_connections: u32,

    /// Persistent messages queued (then drained) by the persistent-backlog scenario.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1000..=100_000_000))]
    backlog_messages: u64,

    /// Durable queues declared (and bound) by the durable-declares scenario.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    declare_queues: u64,
}

/// Where one column of results comes from.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// A broker somebody else started.
    Url { url: String, pid: Option<u32> },
    /// `dispatch-broker --listen 127.0.0.1:0 --data-dir TMP`, started and stopped by the
    /// bench.
    Embedded { bin: Option<PathBuf> },
    /// A private `rabbitmq-server` in a temporary directory, started and stopped by the bench.
    RabbitMq,
}

impl TargetSpec {
    pub fn label(&self) -> String {
        match self {
            TargetSpec::Url { url, .. } => redact(url),
            TargetSpec::Embedded { .. } => "embedded".to_owned(),
            TargetSpec::RabbitMq => "RabbitMQ".to_owned(),
        }
    }
}

/// What to run, checked.
#[derive(Debug)]
pub struct Plan {
    pub targets: Vec<TargetSpec>,
    pub scenarios: Vec<Scenario>,
    pub duration: Duration,
    pub warmup: Duration,
    pub fanout_queues: u32,
    pub idle_connections: u32,
    pub backlog_messages: u64,
    pub declare_queues: u64,
    pub markdown: bool,
    /// Dispatch-level scenarios, run after the broker ones.
    pub dispatch: Vec<DispatchScenario>,
    pub dispatch_ctx: crate::dispatch::DispatchCtx,
}

/// A scenario `--only` names: of a broker, or of dispatch itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    Broker(Scenario),
    Dispatch(DispatchScenario),
}

fn parse_selected(name: &str) -> Result<Selected, String> {
    if let Ok(scenario) = <Scenario as clap::ValueEnum>::from_str(name, false) {
        return Ok(Selected::Broker(scenario));
    }
    if let Ok(scenario) = <DispatchScenario as clap::ValueEnum>::from_str(name, false) {
        return Ok(Selected::Dispatch(scenario));
    }
    let names: Vec<&str> = Scenario::ALL
        .iter()
        .map(|s| s.name())
        .chain(DispatchScenario::ALL.iter().map(|s| s.name()))
        .collect();
    Err(format!(
        "no scenario {name:?}; one of: {}",
        names.join(", ")
    ))
}

impl Args {
    pub fn parse_args() -> Self {
        Args::parse()
    }

    pub fn into_plan(self) -> Result<Plan> {
        let mut broker: Vec<Scenario> = Vec::new();
        let mut dispatch: Vec<DispatchScenario> = Vec::new();
        for selected in &self.only {
            match *selected {
                Selected::Broker(scenario) if !broker.contains(&scenario) => broker.push(scenario),
                Selected::Dispatch(scenario) if !dispatch.contains(&scenario) => {
                    dispatch.push(scenario)
                }
                _ => {}
            }
        }
        let broker_named = self.url.is_some() || self.spawn_embedded || self.compare_rabbitmq;
        if self.dispatch {
            for scenario in DispatchScenario::ALL {
                if !dispatch.contains(&scenario) {
                    dispatch.push(scenario);
                }
            }
        }
        if self.only.is_empty() && (broker_named || !self.dispatch) {
            broker = Scenario::ALL.to_vec();
        }
        if broker.is_empty() && broker_named {
            bail!("a broker is named but no broker scenario is selected");
        }
        let targets = if broker.is_empty() {
            Vec::new()
        } else {
            self.broker_targets()?
        };
        if self.compare_salt && !dispatch.contains(&DispatchScenario::RunWall) {
            bail!("--compare-salt compares run-wall; select it (--dispatch or --only run-wall)");
        }
        let salt_bin = match (self.compare_salt, self.salt_bin) {
            (false, _) => None,
            (true, Some(dir)) => Some(dir),
            (true, None) => Some(find_on_path("salt-master").ok_or_else(|| {
                anyhow::anyhow!(
                    "--compare-salt: no salt-master on PATH; install Salt (python3 -m venv \
                     /tmp/saltvenv && /tmp/saltvenv/bin/pip install salt) and pass \
                     --salt-bin /tmp/saltvenv/bin"
                )
            })?),
        };
        if self.duration < Duration::from_secs(1) {
            bail!("--duration must be at least 1s to give CPU figures (100 ticks/s) meaning");
        }
        Ok(Plan {
            targets,
            scenarios: broker,
            duration: self.duration,
            warmup: self.warmup,
            fanout_queues: self.fanout_queues,
            idle_connections: self.idle_connections,
            backlog_messages: self.backlog_messages,
            declare_queues: self.declare_queues,
            markdown: self.markdown || self.compare_rabbitmq || self.compare_salt,
            dispatch,
            dispatch_ctx: crate::dispatch::DispatchCtx {
                bin_dir: self.dispatch_bin,
                minions: self.minions as usize,
                runs: self.runs as usize,
                warmup_runs: self.warmup_runs as usize,
                lookup_jobs: self.lookup_jobs,
                salt_bin,
            },
        })
    }

    /// The brokers the broker scenarios run against.
    fn broker_targets(&self) -> Result<Vec<TargetSpec>> {
        let first = match (&self.url, self.spawn_embedded) {
            (Some(_), true) => bail!("--url and --spawn-embedded name two brokers; pick one"),
            (Some(url), false) => {
                if !url.starts_with("amqp://") {
                    bail!("--url must be an amqp:// URL, got {url:?}");
                }
                TargetSpec::Url {
                    url: url.clone(),
                    pid: self.broker_pid,
                }
            }
            (None, true) => TargetSpec::Embedded {
                bin: self.broker_bin.clone(),
            },
            (None, false) if self.compare_rabbitmq => TargetSpec::Embedded {
                bin: self.broker_bin.clone(),
            },
            (None, false) => {
                bail!(
                    "say which broker: --url URL, --spawn-embedded or --compare-rabbitmq \
                     (or measure dispatch itself: --dispatch, --only run-wall,job-lookup)"
                )
            }
        };
        let mut targets = vec![first];
        if self.compare_rabbitmq {
            targets.push(TargetSpec::RabbitMq);
        }
        Ok(targets)
    }
}

/// The directory on PATH that holds an executable `name`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| dir.join(name).is_file())
}

/// The URL without its password, for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Result<Plan> {
        Args::try_parse_from(std::iter::once("dispatch-bench").chain(args.iter().copied()))?
            .into_plan()
    }

    #[test]
    fn dispatch_scenarios_need_no_broker() {
        let only = plan(&["--only", "run-wall,job-lookup"]).unwrap();
        assert!(only.targets.is_empty() && only.scenarios.is_empty());
        assert_eq!(only.dispatch, DispatchScenario::ALL);
        let all = plan(&["--dispatch"]).unwrap();
        assert!(all.targets.is_empty());
        assert_eq!(all.dispatch, DispatchScenario::ALL);
        let both = plan(&["--spawn-embedded", "--dispatch"]).unwrap();
        assert_eq!(both.scenarios, Scenario::ALL);
        assert_eq!(both.dispatch, DispatchScenario::ALL);
    }

    #[test]
    fn broker_scenarios_still_need_a_broker() {
        assert!(plan(&[]).is_err());
        assert!(plan(&["--only", "rpc,run-wall"]).is_err());
        let mixed = plan(&["--spawn-embedded", "--only", "rpc,run-wall"]).unwrap();
        assert_eq!(mixed.scenarios, [Scenario::Rpc]);
        assert_eq!(mixed.dispatch, [DispatchScenario::RunWall]);
        assert!(plan(&["--spawn-embedded", "--only", "run-wall"]).is_err());
        assert!(plan(&["--only", "no-such"]).is_err());
    }

    #[test]
    fn salt_compares_run_wall() {
        assert!(plan(&["--only", "job-lookup", "--compare-salt", "--salt-bin", "/x"]).is_err());
        let salt = plan(&["--dispatch", "--compare-salt", "--salt-bin", "/x"]).unwrap();
        assert_eq!(salt.dispatch_ctx.salt_bin, Some(PathBuf::from("/x")));
        assert!(salt.markdown);
    }

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }
}
