//! The command line: [`Args`] as typed, turned into a checked [`Plan`] before any I/O.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;

use crate::scenarios::Scenario;

/// Measure an AMQP 0-9-1 broker with the lapin client: transient 1→1 throughput, fan-out
/// to many queues (wildcard binding and BCC header), request/reply latency, memory per
/// idle connection, persistent publishing with confirms, and a backlog of persistent
/// messages queued with no consumer (broker memory and disk use), then drained. Broker CPU comes from /proc/PID/stat (100 clock ticks per second, the
/// Linux USER_HZ), broker memory from /proc/PID/status (VmRSS).
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

    /// Run only these scenarios (repeat or separate with commas).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    only: Vec<Scenario>,

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
    pub markdown: bool,
}

impl Args {
    pub fn parse_args() -> Self {
        Args::parse()
    }

    pub fn into_plan(self) -> Result<Plan> {
        let first = match (self.url, self.spawn_embedded) {
            (Some(_), true) => bail!("--url and --spawn-embedded name two brokers; pick one"),
            (Some(url), false) => {
                if !url.starts_with("amqp://") {
                    bail!("--url must be an amqp:// URL, got {url:?}");
                }
                TargetSpec::Url {
                    url,
                    pid: self.broker_pid,
                }
            }
            (None, true) => TargetSpec::Embedded {
                bin: self.broker_bin,
            },
            (None, false) if self.compare_rabbitmq => TargetSpec::Embedded {
                bin: self.broker_bin,
            },
            (None, false) => {
                bail!("say which broker: --url URL, --spawn-embedded or --compare-rabbitmq")
            }
        };
        let mut targets = vec![first];
        if self.compare_rabbitmq {
            targets.push(TargetSpec::RabbitMq);
        }
        if self.duration < Duration::from_secs(1) {
            bail!("--duration must be at least 1s to give CPU figures (100 ticks/s) meaning");
        }
        let mut scenarios = if self.only.is_empty() {
            Scenario::ALL.to_vec()
        } else {
            self.only
        };
        scenarios.dedup();
        Ok(Plan {
            targets,
            scenarios,
            duration: self.duration,
            warmup: self.warmup,
            fanout_queues: self.fanout_queues,
            idle_connections: self.idle_connections,
            backlog_messages: self.backlog_messages,
            markdown: self.markdown || self.compare_rabbitmq,
        })
    }
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
    use super::redact;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }
}
