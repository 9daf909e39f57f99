//! Turning outcomes into text: one line per metric, plain or markdown, and with two
//! columns (the broker under test, then RabbitMQ) a ratio column first.
//!
//! Every scenario yields one or more metrics (a rate and its broker CPU, two latency
//! percentiles, a memory figure, disk use); each metric is a row. The issue's target for
//! the metric (issue 2 for transient traffic, issue 3 for persistent), when it has one, is
//! printed beside it so a reader sees at once where we stand.

use std::fmt::Write;

use crate::cli::Plan;
use crate::dispatch::{DispatchMeasured, DispatchOutcome, Fleet, JobLookup, RunWall};
use crate::probe::TICKS_PER_SECOND;
use crate::scenarios::{Backlog, Measured, Outcome, Scenario};

/// The results of one target.
#[derive(Debug)]
pub struct Column {
    label: String,
    cells: Result<Vec<Measured>, String>,
}

impl Column {
    pub fn ran(label: String, measured: Vec<Measured>) -> Self {
        Column {
            label,
            cells: Ok(measured),
        }
    }

    pub fn not_run(label: String, reason: String) -> Self {
        Column {
            label,
            cells: Err(reason),
        }
    }

    /// Whether every scenario produced an outcome.
    pub fn complete(&self) -> bool {
        matches!(&self.cells, Ok(cells) if cells.iter().all(|cell| cell.outcome.is_ok()))
    }

    fn outcome(&self, scenario: Scenario) -> Cell<'_> {
        match &self.cells {
            Err(_) => Cell::NotRun,
            Ok(cells) => match cells.iter().find(|cell| cell.scenario == scenario) {
                Some(Measured {
                    outcome: Ok(outcome),
                    ..
                }) => Cell::Ran(outcome),
                Some(Measured {
                    outcome: Err(_), ..
                })
                | None => Cell::Failed,
            },
        }
    }
}

enum Cell<'a> {
    Ran(&'a Outcome),
    Failed,
    NotRun,
}

/// One number a scenario reports.
struct Metric {
    name: &'static str,
    value: Option<f64>,
    unit: &'static str,
    /// Why `value` may be missing.
    absent: &'static str,
}

impl Metric {
    /// A metric that is missing only when the broker's pid is unknown.
    fn new(name: &'static str, value: Option<f64>, unit: &'static str) -> Self {
        Metric {
            name,
            value,
            unit,
            absent: NO_PID,
        }
    }

    /// A disk-use metric, missing when the broker's data directory is unknown.
    fn disk(name: &'static str, bytes: Option<u64>) -> Self {
        Metric {
            name,
            value: bytes.map(megabytes),
            unit: "MB",
            absent: "n/a (no data dir)",
        }
    }
}

const NO_PID: &str = "n/a (no broker pid)";

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn metrics(outcome: &Outcome) -> Vec<Metric> {
    match outcome {
        &Outcome::Rate {
            per_second,
            unit,
            cpu_us,
        } => {
            let (rate_unit, cpu_unit) = match unit {
                "msg" => ("msg/s", "µs/msg"),
                _ => ("deliveries/s", "µs/delivery"),
            };
            vec![
                Metric::new("rate", Some(per_second), rate_unit),
                Metric::new("broker CPU", cpu_us, cpu_unit),
            ]
        }
        &Outcome::Latency {
            p50_us,
            p99_us,
            cpu_us,
            ..
        } => vec![
            Metric::new("p50", Some(p50_us), "µs"),
            Metric::new("p99", Some(p99_us), "µs"),
            Metric::new("broker CPU", cpu_us, "µs/round trip"),
        ],
        &Outcome::Memory { kib_per_connection } => vec![Metric::new(
            "broker RSS",
            kib_per_connection,
            "KB/connection",
        )],
        &Outcome::Confirmed {
            confirmed_per_second,
            consumed_per_second,
            cpu_us,
        } => vec![
            Metric::new("confirmed rate", Some(confirmed_per_second), "msg/s"),
            Metric::new("consumed rate", Some(consumed_per_second), "msg/s"),
            Metric::new("broker CPU", cpu_us, "µs/msg"),
        ],
        Outcome::Backlog(backlog) => vec![
            Metric::new("publish rate", Some(backlog.publish_per_second), "msg/s"),
            Metric::new("broker CPU, publish", backlog.publish_cpu_us, "µs/msg"),
            Metric::new(
                "broker RSS, all queued",
                backlog.rss_bytes.map(megabytes),
                "MB",
            ),
            Metric::disk("disk use, all queued", backlog.disk_bytes),
            Metric::new("drain rate", Some(backlog.drain_per_second), "msg/s"),
            Metric::new("broker CPU, drain", backlog.drain_cpu_us, "µs/msg"),
            Metric::disk("disk use, drained", backlog.disk_after_bytes),
        ],
        &Outcome::Declares {
            per_second,
            last_tenth_per_second,
            cpu_us,
        } => vec![
            Metric::new("rate", Some(per_second), "queues/s"),
            Metric::new("rate, last tenth", Some(last_tenth_per_second), "queues/s"),
            Metric::new("broker CPU", cpu_us, "µs/queue"),
        ],
    }
}

/// The metric names a scenario reports, in order, for rows where no column has an outcome.
fn metric_names(scenario: Scenario) -> &'static [&'static str] {
    match scenario {
        Scenario::Rpc => &["p50", "p99", "broker CPU"],
        Scenario::IdleMemory => &["broker RSS"],
        Scenario::PersistentConfirms => &["confirmed rate", "consumed rate", "broker CPU"],
        Scenario::PersistentBacklog => &[
            "publish rate",
            "broker CPU, publish",
            "broker RSS, all queued",
            "disk use, all queued",
            "drain rate",
            "broker CPU, drain",
            "disk use, drained",
        ],
        Scenario::DurableDeclares => &["rate", "rate, last tenth", "broker CPU"],
        _ => &["rate", "broker CPU"],
    }
}

/// The goal from issue 2 (transient) or issue 3 (persistent), when one applies.
fn target(scenario: Scenario, metric: &str) -> &'static str {
    match (scenario, metric) {
        (Scenario::PersistentConfirms, "confirmed rate")
        | (Scenario::PersistentBacklog, "publish rate") => "≥ 3× RabbitMQ",
        (Scenario::PersistentConfirms, "broker CPU")
        | (Scenario::PersistentBacklog, "broker CPU, publish") => "≤ 0.2× RabbitMQ",
        (Scenario::PersistentBacklog, "broker RSS, all queued") => "≤ 150 MB",
        (Scenario::PersistentBacklog, "disk use, drained") => "falls back",
        (Scenario::PersistentConfirms | Scenario::PersistentBacklog, _) => "",
        (Scenario::DurableDeclares, "rate, last tenth") => "≈ rate (linear)",
        (Scenario::DurableDeclares, _) => "",
        (Scenario::TransientAutoAck | Scenario::TransientManualAck, "rate") => "≥ 2.5× RabbitMQ",
        (_, "broker CPU") if scenario != Scenario::Rpc => "≤ 0.1× RabbitMQ",
        (Scenario::Rpc, "p50") => "≤ 150 µs",
        (Scenario::Rpc, "p99") => "≤ 300 µs",
        (Scenario::IdleMemory, _) => "≤ 20 KB",
        _ => "",
    }
}

/// `value` with its unit, or `absent` when there is none.
fn format_or(value: Option<f64>, unit: &str, absent: &str) -> String {
    match value {
        None => absent.to_owned(),
        Some(value) if unit.ends_with("/s") => {
            format!("{} {unit}", group_thousands(value.round() as i64))
        }
        Some(value) if value.abs() >= 100.0 => format!("{value:.0} {unit}"),
        Some(value) => format!("{value:.1} {unit}"),
    }
}

pub fn group_thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if value < 0 { format!("-{out}") } else { out }
}

/// A one-line summary for progress output.
pub fn describe(outcome: &Outcome) -> String {
    let mut line = metrics(outcome)
        .iter()
        .map(|metric| {
            format!(
                "{} {}",
                metric.name,
                format_or(metric.value, metric.unit, metric.absent)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    if let Outcome::Latency { round_trips, .. } = outcome {
        let _ = write!(line, " ({round_trips} round trips)");
    }
    line
}

/// The whole report.
pub fn render(plan: &Plan, columns: &[Column]) -> String {
    let compare = columns.len() == 2;
    let mut header = vec!["scenario".to_owned(), "metric".to_owned()];
    if compare {
        header.push(format!("{} / {}", columns[0].label, columns[1].label));
    }
    header.extend(columns.iter().map(|column| column.label.clone()));
    header.push("target".to_owned());

    let mut rows = Vec::new();
    for &scenario in &plan.scenarios {
        let title = columns
            .iter()
            .find_map(|column| match &column.cells {
                Ok(cells) => cells
                    .iter()
                    .find(|cell| cell.scenario == scenario)
                    .map(|cell| cell.title.clone()),
                Err(_) => None,
            })
            .unwrap_or_else(|| scenario.name().to_owned());
        let cells: Vec<Option<Vec<Metric>>> = columns
            .iter()
            .map(|column| match column.outcome(scenario) {
                Cell::Ran(outcome) => Some(metrics(outcome)),
                Cell::Failed | Cell::NotRun => None,
            })
            .collect();
        for (index, name) in metric_names(scenario).iter().enumerate() {
            let mut row = vec![
                if index == 0 {
                    title.clone()
                } else {
                    String::new()
                },
                (*name).to_owned(),
            ];
            let values: Vec<Option<&Metric>> = cells
                .iter()
                .map(|metrics| metrics.as_ref().and_then(|metrics| metrics.get(index)))
                .collect();
            if compare {
                row.push(
                    match (
                        values[0].and_then(|m| m.value),
                        values[1].and_then(|m| m.value),
                    ) {
                        (Some(ours), Some(theirs)) if theirs != 0.0 => {
                            format!("{:.2}×", ours / theirs)
                        }
                        _ => "—".to_owned(),
                    },
                );
            }
            for (column, value) in columns.iter().zip(&values) {
                row.push(match (value, column.outcome(scenario)) {
                    (Some(metric), _) => format_or(metric.value, metric.unit, metric.absent),
                    (None, Cell::NotRun) => "pending".to_owned(),
                    (None, _) => "failed".to_owned(),
                });
            }
            row.push(target(scenario, name).to_owned());
            rows.push(row);
        }
    }

    let mut out = String::new();
    if plan.markdown {
        write_markdown(&mut out, &header, &rows);
    } else {
        write_plain(&mut out, &header, &rows);
    }
    let _ = writeln!(
        out,
        "\nEach rate and latency is measured over {:?} after {:?} of warm-up, 256-byte \
         messages (transient, except persistent ones with delivery_mode 2 to a durable queue \
         in the persistent scenarios), lapin client on the same machine. Broker CPU is \
         utime+stime of the broker process from /proc/PID/stat ({TICKS_PER_SECOND} ticks/s) \
         over the same window; RSS is VmRSS from /proc/PID/status. The persistent backlog \
         is timed by count, not by window: its publish rate runs from the first publish to \
         the last confirm, its drain rate from basic.consume to the last ack; disk use is \
         the space allocated to the broker's data directory (as du counts it) with the \
         backlog queued and 5 s after the drain; MB are 10^6 bytes.",
        plan.duration, plan.warmup
    );
    for column in columns {
        match &column.cells {
            Err(reason) => {
                let _ = writeln!(out, "\n{} not run: {reason}", column.label);
            }
            Ok(cells) => {
                for cell in cells {
                    match &cell.outcome {
                        Err(err) => {
                            let _ =
                                writeln!(out, "\n{}, {}: failed: {err}", column.label, cell.title);
                        }
                        Ok(Outcome::Backlog(Backlog {
                            messages, queued, ..
                        })) if queued != messages => {
                            let _ = writeln!(
                                out,
                                "\n{}, {}: the queue held {queued} messages after {messages} \
                                 confirmed publishes; {queued} were drained.",
                                column.label, cell.title
                            );
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
    }
    out
}

/// Salt's figures in issues 5 and 6, measured earlier on this kind of machine (Salt
/// 3008.5, 10 minions): `salt '*' test.ping` wall, salt-minion RSS, one job lookup.
const SALT_ISSUE_PING_MS: f64 = 1870.0;
const SALT_ISSUE_MINION_MIB: f64 = 117.0;
const SALT_ISSUE_LOOKUP_MS: f64 = 1600.0;

/// Whether every dispatch scenario produced an outcome (Salt failing to run counts too).
pub fn dispatch_complete(measured: &[DispatchMeasured]) -> bool {
    measured.iter().all(|cell| match &cell.outcome {
        Ok(DispatchOutcome::RunWall(run)) => {
            matches!(&run.dispatch, Ok(fleet) if fleet.failed.is_empty())
                && !matches!(run.salt, Some(Err(_)))
        }
        Ok(_) => true,
        Err(_) => false,
    })
}

/// A Salt figure and where it comes from.
#[derive(Clone, Copy)]
enum Salt {
    Measured(f64),
    FromIssue(f64),
    None,
}

impl Salt {
    fn value(self) -> Option<f64> {
        match self {
            Salt::Measured(value) | Salt::FromIssue(value) => Some(value),
            Salt::None => None,
        }
    }
}

/// One row of the dispatch table: values in `unit` ("ms", "MiB", "jobs/s", "MB").
struct DispatchRow {
    title: String,
    metric: String,
    ours: Option<f64>,
    salt: Salt,
    unit: &'static str,
    target: &'static str,
}

fn format_unit(value: f64, unit: &str) -> String {
    match unit {
        "ms" if value >= 1000.0 => format!("{:.2} s", value / 1000.0),
        "ms" | "MiB" | "MB" if value < 100.0 => format!("{value:.1} {unit}"),
        "jobs/s" => format!("{} {unit}", group_thousands(value.round() as i64)),
        "count" => format!("{value:.0}"),
        _ => format!("{value:.0} {unit}"),
    }
}

fn format_ratio(ours: f64, theirs: f64) -> String {
    if ours == 0.0 {
        return "—".to_owned();
    }
    let ratio = ours / theirs;
    if ratio > 0.0 && ratio < 0.1 {
        format!("{ratio:.3}× (1/{:.0})", 1.0 / ratio)
    } else {
        format!("{ratio:.2}×")
    }
}

fn wall_rows(
    rows: &mut Vec<DispatchRow>,
    title: &str,
    what: &str,
    walls: &crate::dispatch::procs::Walls,
    salt: [Salt; 3],
    target: &'static str,
) {
    let stats = [
        ("p50", walls.p50_ms()),
        ("p90", walls.p90_ms()),
        ("max", walls.max_ms()),
    ];
    for ((stat, value), salt) in stats.into_iter().zip(salt) {
        rows.push(DispatchRow {
            title: if rows.iter().any(|row| row.title == title) {
                String::new()
            } else {
                title.to_owned()
            },
            metric: format!("{what}, {stat}"),
            ours: Some(value),
            salt,
            unit: "ms",
            target: if stat == "p50" { target } else { "" },
        });
    }
}

fn run_wall_rows(rows: &mut Vec<DispatchRow>, title: &str, run: &RunWall) {
    let salt: Option<&Fleet> = match &run.salt {
        Some(Ok(fleet)) => Some(fleet),
        _ => None,
    };
    let pick = |f: &dyn Fn(&Fleet) -> f64, issue: Option<f64>| match (salt, issue) {
        (Some(fleet), _) => Salt::Measured(f(fleet)),
        (None, Some(issue)) => Salt::FromIssue(issue),
        (None, None) => Salt::None,
    };
    let Ok(d) = &run.dispatch else {
        // Dispatch failed: Salt's figures alone, each against a failed cell.
        for (metric, salt, unit) in [
            (
                "wall, p50",
                pick(&|f| f.walls.p50_ms(), Some(SALT_ISSUE_PING_MS)),
                "ms",
            ),
            ("wall, p90", pick(&|f| f.walls.p90_ms(), None), "ms"),
            ("wall, max", pick(&|f| f.walls.max_ms(), None), "ms"),
            (
                "minion RSS, mean",
                pick(
                    &|f| f.minion_rss_mean_kib() / 1024.0,
                    Some(SALT_ISSUE_MINION_MIB),
                ),
                "MiB",
            ),
            (
                "minion RSS, max",
                pick(&|f| f.minion_rss_max_kib() / 1024.0, None),
                "MiB",
            ),
            (
                "master RSS",
                pick(&|f| f.master_rss_kib as f64 / 1024.0, None),
                "MiB",
            ),
        ] {
            rows.push(DispatchRow {
                title: if rows.iter().any(|row| row.title == title) {
                    String::new()
                } else {
                    title.to_owned()
                },
                metric: metric.to_owned(),
                ours: None,
                salt,
                unit,
                target: "",
            });
        }
        return;
    };
    wall_rows(
        rows,
        title,
        "wall",
        &d.walls,
        [
            pick(&|f| f.walls.p50_ms(), Some(SALT_ISSUE_PING_MS)),
            pick(&|f| f.walls.p90_ms(), None),
            pick(&|f| f.walls.max_ms(), None),
        ],
        "≤ 50 ms",
    );
    let mib = |kib: f64| kib / 1024.0;
    for (metric, ours, salt, target) in [
        (
            "minion RSS, mean",
            mib(d.minion_rss_mean_kib()),
            pick(
                &|f| mib(f.minion_rss_mean_kib()),
                Some(SALT_ISSUE_MINION_MIB),
            ),
            "≤ 8 MiB",
        ),
        (
            "minion RSS, max",
            mib(d.minion_rss_max_kib()),
            pick(&|f| mib(f.minion_rss_max_kib()), None),
            "",
        ),
        (
            "master RSS",
            mib(d.master_rss_kib as f64),
            pick(&|f| mib(f.master_rss_kib as f64), None),
            "",
        ),
    ] {
        rows.push(DispatchRow {
            title: String::new(),
            metric: metric.to_owned(),
            ours: Some(ours),
            salt,
            unit: "MiB",
            target,
        });
    }
    rows.push(DispatchRow {
        title: String::new(),
        metric: format!("runs not exit 0 (of {})", run_count(d)),
        ours: Some(d.failed.len() as f64),
        salt: match salt {
            Some(fleet) => Salt::Measured(fleet.failed.len() as f64),
            None => Salt::None,
        },
        unit: "count",
        target: "0",
    });
}

/// Warm-up and timed runs made.
fn run_count(fleet: &Fleet) -> usize {
    fleet.walls.len() + fleet.failed.len()
}

fn job_lookup_rows(rows: &mut Vec<DispatchRow>, title: &str, lookup: &JobLookup) {
    let issue = [
        Salt::FromIssue(SALT_ISSUE_LOOKUP_MS),
        Salt::None,
        Salt::None,
    ];
    wall_rows(
        rows,
        title,
        "`job` by 12-digit prefix",
        &lookup.by_prefix,
        issue,
        "≤ 20 ms",
    );
    wall_rows(
        rows,
        title,
        "`job` by 12-digit suffix",
        &lookup.by_suffix,
        issue,
        "≤ 20 ms",
    );
    wall_rows(
        rows,
        title,
        "`job` by full id",
        &lookup.by_id,
        issue,
        "≤ 20 ms",
    );
    wall_rows(
        rows,
        title,
        "`jobs --limit 20`",
        &lookup.list,
        [Salt::None; 3],
        "",
    );
    for (metric, ours, unit) in [
        (
            "store fill (library, before start)",
            lookup.jobs as f64 / lookup.fill.as_secs_f64(),
            "jobs/s",
        ),
        ("store size", lookup.store_bytes as f64 / 1e6, "MB"),
        ("master RSS", lookup.master_rss_kib as f64 / 1024.0, "MiB"),
    ] {
        rows.push(DispatchRow {
            title: String::new(),
            metric: metric.to_owned(),
            ours: Some(ours),
            salt: Salt::None,
            unit,
            target: "",
        });
    }
}

/// The dispatch table: ratio to Salt first, then dispatch, Salt and the issue's target.
pub fn render_dispatch(plan: &Plan, measured: &[DispatchMeasured]) -> String {
    let ctx = &plan.dispatch_ctx;
    let salt_run = measured.iter().find_map(|cell| match &cell.outcome {
        Ok(DispatchOutcome::RunWall(run)) => run.salt.as_ref(),
        _ => None,
    });
    let salt_label = match salt_run {
        Some(Ok(fleet)) => format!(
            "Salt {}(measured)",
            fleet
                .version
                .as_deref()
                .map(|v| format!("{v} "))
                .unwrap_or_default()
        ),
        _ => "Salt 3008.5 (issue)".to_owned(),
    };
    let header: Vec<String> = [
        "scenario",
        "metric",
        "dispatch / Salt",
        "dispatch",
        &salt_label,
        "target",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut rows: Vec<DispatchRow> = Vec::new();
    for cell in measured {
        match &cell.outcome {
            Ok(DispatchOutcome::RunWall(run)) => run_wall_rows(&mut rows, &cell.title, run),
            Ok(DispatchOutcome::JobLookup(lookup)) => {
                job_lookup_rows(&mut rows, &cell.title, lookup)
            }
            Err(_) => rows.push(DispatchRow {
                title: cell.title.clone(),
                metric: "—".to_owned(),
                ours: None,
                salt: Salt::None,
                unit: "",
                target: "",
            }),
        }
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.title.clone(),
                row.metric.clone(),
                match (row.ours, row.salt.value()) {
                    (Some(ours), Some(theirs)) if theirs > 0.0 => format_ratio(ours, theirs),
                    _ => "—".to_owned(),
                },
                row.ours
                    .map(|v| format_unit(v, row.unit))
                    .unwrap_or_else(|| "failed".to_owned()),
                match row.salt {
                    Salt::Measured(v) => format_unit(v, row.unit),
                    Salt::FromIssue(v) => format!("{} (issue)", format_unit(v, row.unit)),
                    Salt::None => "—".to_owned(),
                },
                row.target.to_owned(),
            ]
        })
        .collect();
    let mut out = String::new();
    if plan.markdown {
        write_markdown(&mut out, &header, &table);
    } else {
        write_plain(&mut out, &header, &table);
    }
    let _ = writeln!(
        out,
        "\nWall times are of the real CLI process, spawn to exit, {} timed runs after {} \
         untimed ones, exit code checked each time; p50/p90 are nearest-rank. Processes run \
         on this machine, master and minions started by the bench from a temporary \
         directory. RSS is VmRSS from /proc/PID/status summed over the process tree \
         (a dispatch daemon is one process), MiB = 2^20 bytes, after the timed runs.",
        ctx.runs, ctx.warmup_runs
    );
    match salt_run {
        Some(Ok(fleet)) => {
            let _ = writeln!(
                out,
                "\nSalt was measured in this run: a private salt-master ({} processes) and {} \
                 salt-minions ({} processes each), `salt '*' test.ping` timed like \
                 `dispatch run`. Salt's job-lookup figure is from issue 6 (not re-measured).",
                fleet.master_processes,
                fleet.minion_rss_kib.len(),
                fleet.minion_processes
            );
        }
        Some(Err(err)) => {
            let _ = writeln!(
                out,
                "\nSalt could not run here ({err}); Salt figures are from the issues \
                 (measured earlier on this kind of machine), not re-measured in this run."
            );
        }
        None => {
            let _ = writeln!(
                out,
                "\nSalt figures from the issues (measured earlier on this kind of machine), \
                 not re-measured in this run."
            );
        }
    }
    for cell in measured {
        if let Ok(DispatchOutcome::RunWall(RunWall {
            dispatch: Ok(fleet),
            ..
        })) = &cell.outcome
        {
            for failure in &fleet.failed {
                let _ = writeln!(out, "\n{}: not exit 0, not timed: {failure}", cell.title);
            }
        }
        match &cell.outcome {
            Err(err)
            | Ok(DispatchOutcome::RunWall(RunWall {
                dispatch: Err(err), ..
            })) => {
                let _ = writeln!(out, "\n{}: failed: {err}", cell.title);
            }
            Ok(_) => {}
        }
    }
    out
}

fn write_markdown(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(header.len()));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
}

fn write_plain(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|index| {
            std::iter::once(header)
                .chain(rows.iter().map(Vec::as_slice))
                .map(|row| row[index].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell}{}", " ".repeat(width - cell.chars().count())))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_grouped_by_thousands() {
        assert_eq!(format_or(Some(23_412.4), "msg/s", NO_PID), "23,412 msg/s");
        assert_eq!(format_or(Some(56.06), "µs/msg", NO_PID), "56.1 µs/msg");
        assert_eq!(format_or(Some(394.2), "µs", NO_PID), "394 µs");
        assert_eq!(format_or(None, "µs/msg", NO_PID), "n/a (no broker pid)");
    }
}
