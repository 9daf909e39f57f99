//! `run-wall`: a master and `--minions` minion processes on this machine; the wall time
//! of the real `dispatch run '*' true` CLI process, start to exit (exit code 0 checked
//! each time), and the resident memory of the daemons afterwards. With `--compare-salt`,
//! the same for `salt '*' test.ping` once dispatch is stopped.

use anyhow::{Context, Result, bail};

use super::procs::{Binaries, Cluster, Walls};
use super::{DispatchCtx, Fleet, RunWall, salt, tree_rss_kib};

/// Dispatch, then Salt; Salt runs even when dispatch could not, and the other way round.
pub fn run(ctx: &DispatchCtx) -> Result<RunWall> {
    let dispatch = dispatch_fleet(ctx);
    match &dispatch {
        Ok(dispatch) => eprintln!(
            "     dispatch: wall p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms; minion RSS mean {:.1} MiB",
            dispatch.walls.p50_ms(),
            dispatch.walls.p90_ms(),
            dispatch.walls.max_ms(),
            dispatch.minion_rss_mean_kib() / 1024.0
        ),
        Err(err) => eprintln!("     dispatch failed: {err:#}"),
    }
    let salt = ctx.salt_bin.as_ref().map(|bin| {
        let measured = salt::fleet(bin, ctx);
        match &measured {
            Ok(salt) => eprintln!(
                "     Salt: wall p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms; minion RSS mean {:.1} MiB",
                salt.walls.p50_ms(),
                salt.walls.p90_ms(),
                salt.walls.max_ms(),
                salt.minion_rss_mean_kib() / 1024.0
            ),
            Err(err) => eprintln!("     Salt could not run: {err:#}"),
        }
        measured.map_err(|err| format!("{err:#}"))
    });
    Ok(RunWall {
        dispatch: dispatch.map_err(|err| format!("{err:#}")),
        salt,
    })
}

fn dispatch_fleet(ctx: &DispatchCtx) -> Result<Fleet> {
    let bins = Binaries::find(ctx.bin_dir.as_deref())?;
    let mut cluster = Cluster::start_master(&bins, "run-wall")?;
    eprintln!(
        "     master pid {} on {}, data dir {}",
        cluster.master.pid(),
        cluster.url,
        cluster.data_dir.display()
    );
    cluster
        .start_minions(ctx.minions)
        .context("starting the minions")?;
    let args = ["run", "*", "true"];
    // A run that does not exit 0 is counted and reported, not timed; the others go on,
    // so one lost return does not hide every other figure.
    let mut walls = Vec::with_capacity(ctx.runs);
    let mut failed = Vec::new();
    for run in 0..ctx.warmup_runs + ctx.runs {
        let label = if run < ctx.warmup_runs {
            format!("warm-up run {} of {}", run + 1, ctx.warmup_runs)
        } else {
            format!("timed run {} of {}", run - ctx.warmup_runs + 1, ctx.runs)
        };
        match cluster.timed(&args, 0) {
            Ok(wall) if run >= ctx.warmup_runs => walls.push(wall),
            Ok(_) => {}
            Err(err) => {
                let summary = summary(&format!("{err:#}"));
                eprintln!("     {label} failed: {summary}");
                failed.push(format!("{label}: {summary}"));
            }
        }
    }
    if walls.is_empty() {
        bail!("no run exited 0; {}", failed.join("; "));
    }
    // Memory once the last run's children have gone, as for Salt.
    std::thread::sleep(super::SETTLE);
    let mut minion_rss_kib = Vec::new();
    let mut minion_processes = 0;
    for minion in &cluster.minions {
        let (rss, processes) = tree_rss_kib(minion.pid())?;
        minion_rss_kib.push(rss);
        minion_processes = minion_processes.max(processes);
    }
    let (master_rss_kib, master_processes) = tree_rss_kib(cluster.master.pid())?;
    cluster.stop();
    Ok(Fleet {
        walls: Walls::new(walls),
        minion_rss_kib,
        master_rss_kib,
        master_processes,
        minion_processes,
        version: None,
        failed,
    })
}

/// The lines of a failure that say what happened: the first, cut before the minions'
/// output, and the summary (`job …`, `timed out …`).
fn summary(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    let first = first.split(": bench.").next().unwrap_or(first);
    let mut parts = vec![first.trim_end_matches(':').to_owned()];
    parts.extend(
        text.lines()
            .map(str::trim)
            .filter(|line| line.starts_with("job ") || line.starts_with("timed out"))
            .map(str::to_owned),
    );
    parts.join("; ")
}
