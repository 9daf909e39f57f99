//! The scenarios: what each measures, and how one target runs them all.
//!
//! Each scenario opens its own connections, declares what it needs under a name prefix
//! unique to this run (so two benches can share a broker), measures, and closes
//! everything it opened, whether it succeeded or not. A failed scenario becomes an error
//! cell in the report; the others still run.

mod durable_declares;
mod fanout;
mod idle_memory;
mod persistent_backlog;
mod persistent_confirms;
mod rpc;
mod throughput;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::ValueEnum;

use crate::cli::Plan;
use crate::probe::Probe;
use crate::servers::Target;

/// Body size of every benchmark message.
pub const BODY_SIZE: usize = 256;

/// The scenarios, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Transient 1→1 throughput, consumer with no-ack.
    TransientAutoAck,
    /// Transient 1→1 throughput, consumer acks each message, prefetch 1000.
    TransientManualAck,
    /// One publish routed to every fan-out queue by a `fan.#` topic binding.
    FanoutTopic,
    /// One publish to the default exchange whose BCC header names every fan-out queue.
    FanoutBcc,
    /// Request/reply round trip, one request at a time.
    Rpc,
    /// Broker memory per idle connection with 1 channel, 1 queue, 1 consumer.
    IdleMemory,
    /// Persistent messages to a durable queue, publisher confirms (1000 in flight),
    /// consumer acks with prefetch 1000.
    PersistentConfirms,
    /// A backlog of persistent messages with no consumer (rate, RSS, disk), then drained.
    PersistentBacklog,
    /// Durable queues declared and bound one after another, as for a large fleet.
    DurableDeclares,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::TransientAutoAck,
        Scenario::TransientManualAck,
        Scenario::FanoutTopic,
        Scenario::FanoutBcc,
        Scenario::Rpc,
        Scenario::IdleMemory,
        Scenario::PersistentConfirms,
        Scenario::PersistentBacklog,
        Scenario::DurableDeclares,
    ];

    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::TransientAutoAck => "transient-auto-ack",
            Scenario::TransientManualAck => "transient-manual-ack",
            Scenario::FanoutTopic => "fanout-topic",
            Scenario::FanoutBcc => "fanout-bcc",
            Scenario::Rpc => "rpc",
            Scenario::IdleMemory => "idle-memory",
            Scenario::PersistentConfirms => "persistent-confirms",
            Scenario::PersistentBacklog => "persistent-backlog",
            Scenario::DurableDeclares => "durable-declares",
        }
    }

    /// What the report calls it.
    pub fn title(self, ctx: &Ctx) -> String {
        match self {
            Scenario::TransientAutoAck => "transient 1→1, auto-ack".to_owned(),
            Scenario::TransientManualAck => "transient 1→1, manual ack, prefetch 1000".to_owned(),
            Scenario::FanoutTopic => {
                format!("fan-out to {} queues, `fan.#` binding", ctx.fanout_queues)
            }
            Scenario::FanoutBcc => format!("fan-out to {} queues, BCC header", ctx.fanout_queues),
            Scenario::Rpc => "request/reply round trip".to_owned(),
            Scenario::IdleMemory => format!("{} idle connections", ctx.idle_connections),
            Scenario::PersistentConfirms => format!(
                "persistent, confirms ({} in flight), consumer acks, prefetch {}",
                persistent_confirms::IN_FLIGHT,
                persistent_confirms::PREFETCH
            ),
            Scenario::PersistentBacklog => format!(
                "{} persistent queued, no consumer, then drained",
                crate::report::group_thousands(ctx.backlog_messages as i64)
            ),
            Scenario::DurableDeclares => format!(
                "{} durable queues declared and bound, {} channels",
                crate::report::group_thousands(ctx.declare_queues as i64),
                durable_declares::CHANNELS
            ),
        }
    }

    /// How long the scenario may take in all, set-up and teardown included.
    fn time_limit(self, ctx: &Ctx) -> Duration {
        // Set-up of 1000 queues or connections is slow on some brokers; allow for it.
        let slack = Duration::from_secs(180);
        match self {
            // Count-bound, not time-bound: publish and drain, each allowed an average of
            // 2000 msg/s; a stall fails sooner (no confirm or delivery for 60 s).
            Scenario::PersistentBacklog => {
                slack + Duration::from_secs(ctx.backlog_messages.div_ceil(1000))
            }
            // Declared, then deleted, at an average of at least 100 queues/s each way.
            Scenario::DurableDeclares => {
                slack + Duration::from_secs(2 * ctx.declare_queues.div_ceil(100))
            }
            _ => ctx.warmup + ctx.duration + slack,
        }
    }

    async fn run(self, ctx: &Ctx) -> Result<Outcome> {
        match self {
            Scenario::TransientAutoAck => throughput::run(ctx, throughput::Acks::Auto).await,
            Scenario::TransientManualAck => throughput::run(ctx, throughput::Acks::Manual).await,
            Scenario::FanoutTopic => fanout::run(ctx, fanout::Routing::TopicBinding).await,
            Scenario::FanoutBcc => fanout::run(ctx, fanout::Routing::BccHeader).await,
            Scenario::Rpc => rpc::run(ctx).await,
            Scenario::IdleMemory => idle_memory::run(ctx).await,
            Scenario::PersistentConfirms => persistent_confirms::run(ctx).await,
            Scenario::PersistentBacklog => persistent_backlog::run(ctx).await,
            Scenario::DurableDeclares => durable_declares::run(ctx).await,
        }
    }
}

/// What a scenario needs to know about the run and the target.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub url: String,
    pub probe: Option<Probe>,
    pub duration: Duration,
    pub warmup: Duration,
    pub fanout_queues: u32,
    pub idle_connections: u32,
    pub backlog_messages: u64,
    pub declare_queues: u64,
    /// The broker's data directory, for disk-use figures.
    pub data_dir: Option<PathBuf>,
    /// Prefix of every exchange and queue name this scenario declares.
    pub prefix: String,
}

/// What one scenario measured.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Messages (1→1) or deliveries (fan-out) per second, broker CPU per each.
    Rate {
        per_second: f64,
        unit: &'static str,
        cpu_us: Option<f64>,
    },
    /// Round-trip latency percentiles, broker CPU per round trip.
    Latency {
        p50_us: f64,
        p99_us: f64,
        round_trips: usize,
        cpu_us: Option<f64>,
    },
    /// Broker RSS growth per connection; `None` without a broker pid.
    Memory { kib_per_connection: Option<f64> },
    /// Persistent publishing with confirms while a consumer takes the messages: confirmed
    /// and consumed messages per second over the same window, broker CPU per confirmed
    /// message.
    Confirmed {
        confirmed_per_second: f64,
        consumed_per_second: f64,
        cpu_us: Option<f64>,
    },
    /// A persistent backlog published with confirms and no consumer, then drained.
    Backlog(Backlog),
    /// Durable queues declared and bound per second, over the run and its last tenth,
    /// and broker CPU per queue.
    Declares {
        per_second: f64,
        last_tenth_per_second: f64,
        cpu_us: Option<f64>,
    },
}

/// What the persistent-backlog scenario measured. Memory and disk are `None` when the
/// broker's pid or data directory is unknown.
#[derive(Debug, Clone)]
pub struct Backlog {
    /// Messages published (all confirmed).
    pub messages: u64,
    /// Messages the queue held once every confirm had arrived (passive declare).
    pub queued: u64,
    pub publish_per_second: f64,
    pub publish_cpu_us: Option<f64>,
    /// Broker VmRSS with the backlog queued, in bytes.
    pub rss_bytes: Option<u64>,
    /// Disk use of the data directory with the backlog queued, in bytes.
    pub disk_bytes: Option<u64>,
    pub drain_per_second: f64,
    pub drain_cpu_us: Option<f64>,
    /// Disk use of the data directory once drained and settled, in bytes.
    pub disk_after_bytes: Option<u64>,
}

/// One scenario's line in the report.
#[derive(Debug)]
pub struct Measured {
    pub scenario: Scenario,
    pub title: String,
    pub outcome: Result<Outcome, String>,
}

/// Runs every scenario of the plan against one started target, each bounded in time.
/// Idle memory runs first, against a broker no other scenario has grown yet; the report
/// keeps the plan's order.
pub async fn run_all(plan: &Plan, target: &Target) -> Vec<Measured> {
    let mut order: Vec<(usize, Scenario)> = plan.scenarios.iter().copied().enumerate().collect();
    order.sort_by_key(|&(_, scenario)| scenario != Scenario::IdleMemory);
    let mut results = Vec::new();
    for (index, scenario) in order {
        let ctx = Ctx {
            url: target.url.clone(),
            probe: target.probe,
            duration: plan.duration,
            warmup: plan.warmup,
            fanout_queues: plan.fanout_queues,
            idle_connections: plan.idle_connections,
            backlog_messages: plan.backlog_messages,
            declare_queues: plan.declare_queues,
            data_dir: target.data_dir.clone(),
            prefix: format!("dispatch-bench.{}.{index}", std::process::id()),
        };
        let title = scenario.title(&ctx);
        eprintln!("   {title} ...");
        let limit = scenario.time_limit(&ctx);
        let outcome = match tokio::time::timeout(limit, scenario.run(&ctx)).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(err)) => Err(format!("{err:#}")),
            Err(_) => Err(format!("did not finish within {limit:?}")),
        };
        match &outcome {
            Ok(outcome) => eprintln!("     {}", crate::report::describe(outcome)),
            Err(err) => eprintln!("     failed: {err}"),
        }
        results.push(Measured {
            scenario,
            title,
            outcome,
        });
    }
    results
}

/// Publishes `message` on `channel` as fast as `credit` allows, measures `counter` over
/// the measured window as a rate of `unit`s, then stops the publisher.
pub async fn publish_and_measure(
    ctx: &Ctx,
    workers: &mut tokio::task::JoinSet<Result<()>>,
    channel: lapin::Channel,
    credit: crate::flow::Credit,
    message: crate::flow::Message,
    counter: &std::sync::atomic::AtomicU64,
    unit: &'static str,
) -> Result<Outcome> {
    workers.spawn(crate::flow::publish_until_closed(
        channel,
        credit.clone(),
        message,
    ));
    let rate = crate::flow::measure_rate(
        counter,
        ctx.probe.as_ref(),
        ctx.warmup,
        ctx.duration,
        workers,
    )
    .await;
    credit.close();
    let rate = rate?;
    Ok(Outcome::Rate {
        per_second: rate.per_second,
        unit,
        cpu_us: rate.cpu_us_per_unit,
    })
}
