//! The scenarios: what each measures, and how one target runs them all.
//!
//! Each scenario opens its own connections, declares what it needs under a name prefix
//! unique to this run (so two benches can share a broker), measures, and closes
//! everything it opened, whether it succeeded or not. A failed scenario becomes an error
//! cell in the report; the others still run.

mod fanout;
mod idle_memory;
mod rpc;
mod throughput;

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
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::TransientAutoAck,
        Scenario::TransientManualAck,
        Scenario::FanoutTopic,
        Scenario::FanoutBcc,
        Scenario::Rpc,
        Scenario::IdleMemory,
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
            prefix: format!("dispatch-bench.{}.{index}", std::process::id()),
        };
        let title = scenario.title(&ctx);
        eprintln!("   {title} ...");
        // Set-up of 1000 queues or connections is slow on some brokers; allow for it.
        let limit = plan.warmup + plan.duration + Duration::from_secs(180);
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
