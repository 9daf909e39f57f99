//! `dispatch-bench`: throughput, latency and memory of an AMQP 0-9-1 broker, measured with
//! the same lapin client the rest of dispatch uses.
//!
//! Flow: [`cli::Args`] is parsed and validated into a [`cli::Plan`] before any I/O; each
//! target of the plan (a URL, the embedded broker spawned from beside this executable, or
//! a private RabbitMQ) is started by [`servers`], every selected [`scenarios::Scenario`]
//! runs against it in turn, and [`report`] prints the outcomes, as a comparison table with
//! ratios first when two brokers ran side by side.
//!
//! Exit codes: 0 when every scenario ran, 1 when one or more failed (their cells say why),
//! 2 for usage errors and for a target that could not be started.

mod cli;
mod flow;
mod probe;
mod report;
mod scenarios;
mod servers;

use std::process::ExitCode;

use anyhow::Result;

fn main() -> ExitCode {
    let plan = match cli::Args::parse_args().into_plan() {
        Ok(plan) => plan,
        Err(err) => {
            eprintln!("dispatch-bench: {err:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("dispatch-bench: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run_until_interrupted(plan)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("dispatch-bench: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the plan; Ctrl-C drops it, and dropping stops every broker this process started.
async fn run_until_interrupted(plan: cli::Plan) -> Result<ExitCode> {
    tokio::select! {
        result = run(plan) => result,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; brokers started by the bench were stopped"),
    }
}

async fn run(plan: cli::Plan) -> Result<ExitCode> {
    let mut columns = Vec::new();
    for spec in &plan.targets {
        eprintln!("== {}", spec.label());
        let column = match servers::Target::start(spec).await {
            Ok(target) => {
                let outcomes = scenarios::run_all(&plan, &target).await;
                target.stop().await;
                report::Column::ran(spec.label(), outcomes)
            }
            Err(err) if plan.targets.len() > 1 => {
                eprintln!("   not run: {err:#}");
                report::Column::not_run(spec.label(), format!("{err:#}"))
            }
            Err(err) => return Err(err),
        };
        columns.push(column);
    }
    let all_ran = columns.iter().all(report::Column::complete);
    print!("{}", report::render(&plan, &columns));
    Ok(if all_ran {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
