//! `dispatch-bench`: throughput, latency and memory of an AMQP 0-9-1 broker, measured with
//! the same lapin client the rest of dispatch uses; and dispatch itself ([`dispatch`]):
//! wall time of the real `dispatch` CLI against a local master and minion processes,
//! their memory, and job lookups in a large job store, optionally beside Salt.
//!
//! Flow: [`cli::Args`] is parsed and validated into a [`cli::Plan`] before any I/O; each
//! target of the plan (a URL, the embedded broker spawned from beside this executable, or
//! a private RabbitMQ) is started by [`servers`], every selected [`scenarios::Scenario`]
//! runs against it in turn, and [`report`] prints the outcomes, as a comparison table with
//! ratios first when two brokers ran side by side. The dispatch scenarios run after
//! the broker ones and get a table of their own, with ratios to Salt first.
//!
//! Exit codes: 0 when every scenario ran, 1 when one or more failed (their cells say why),
//! 2 for usage errors and for a target that could not be started.

mod cli;
mod dispatch;
mod flow;
mod pipeline;
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
        _ = tokio::signal::ctrl_c() => {
            // Dispatch scenarios drive their processes from blocking threads that the
            // runtime cannot cancel; their process groups are killed here instead.
            dispatch::procs::kill_all();
            anyhow::bail!("interrupted; processes started by the bench were stopped")
        }
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
            Err(err) if plan.targets.len() > 1 || !plan.dispatch.is_empty() => {
                eprintln!("   not run: {err:#}");
                report::Column::not_run(spec.label(), format!("{err:#}"))
            }
            Err(err) => return Err(err),
        };
        columns.push(column);
    }
    let mut all_ran = columns.iter().all(report::Column::complete);
    if !columns.is_empty() {
        print!("{}", report::render(&plan, &columns));
    }
    if !plan.dispatch.is_empty() {
        eprintln!("== dispatch");
        let measured = dispatch::run_all(&plan.dispatch, &plan.dispatch_ctx).await;
        all_ran &= report::dispatch_complete(&measured);
        if !columns.is_empty() {
            println!();
        }
        print!("{}", report::render_dispatch(&plan, &measured));
    }
    Ok(if all_ran {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
