//! Turning outcomes into text: one line per metric, plain or markdown, and with two
//! columns (the broker under test, then RabbitMQ) a ratio column first.
//!
//! Every scenario yields one or more metrics (a rate and its broker CPU, two latency
//! percentiles, a memory figure); each metric is a row. The target for the metric,
//! when it has one, is printed beside it so a reader sees at once where we stand.

use std::fmt::Write;

use crate::cli::Plan;
use crate::probe::TICKS_PER_SECOND;
use crate::scenarios::{Measured, Outcome, Scenario};

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
}

fn metrics(outcome: &Outcome) -> Vec<Metric> {
    match *outcome {
        Outcome::Rate {
            per_second,
            unit,
            cpu_us,
        } => {
            let (rate_unit, cpu_unit) = match unit {
                "msg" => ("msg/s", "µs/msg"),
                _ => ("deliveries/s", "µs/delivery"),
            };
            vec![
                Metric {
                    name: "rate",
                    value: Some(per_second),
                    unit: rate_unit,
                },
                Metric {
                    name: "broker CPU",
                    value: cpu_us,
                    unit: cpu_unit,
                },
            ]
        }
        Outcome::Latency {
            p50_us,
            p99_us,
            cpu_us,
            ..
        } => vec![
            Metric {
                name: "p50",
                value: Some(p50_us),
                unit: "µs",
            },
            Metric {
                name: "p99",
                value: Some(p99_us),
                unit: "µs",
            },
            Metric {
                name: "broker CPU",
                value: cpu_us,
                unit: "µs/round trip",
            },
        ],
        Outcome::Memory { kib_per_connection } => vec![Metric {
            name: "broker RSS",
            value: kib_per_connection,
            unit: "KB/connection",
        }],
    }
}

/// The metric names a scenario reports, in order, for rows where no column has an outcome.
fn metric_names(scenario: Scenario) -> &'static [&'static str] {
    match scenario {
        Scenario::Rpc => &["p50", "p99", "broker CPU"],
        Scenario::IdleMemory => &["broker RSS"],
        _ => &["rate", "broker CPU"],
    }
}

/// The goal from issue 2, when one applies to this metric.
fn target(scenario: Scenario, metric: &str) -> &'static str {
    match (scenario, metric) {
        (Scenario::TransientAutoAck | Scenario::TransientManualAck, "rate") => "≥ 2.5× RabbitMQ",
        (_, "broker CPU") if scenario != Scenario::Rpc => "≤ 0.1× RabbitMQ",
        (Scenario::Rpc, "p50") => "≤ 150 µs",
        (Scenario::Rpc, "p99") => "≤ 300 µs",
        (Scenario::IdleMemory, _) => "≤ 20 KB",
        _ => "",
    }
}

fn format_value(value: Option<f64>, unit: &str) -> String {
    match value {
        None => "n/a (no broker pid)".to_owned(),
        Some(value) if unit.ends_with("/s") => {
            format!("{} {unit}", group_thousands(value.round() as i64))
        }
        Some(value) if value.abs() >= 100.0 => format!("{value:.0} {unit}"),
        Some(value) => format!("{value:.1} {unit}"),
    }
}

fn group_thousands(value: i64) -> String {
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
                format_value(metric.value, metric.unit)
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
                    (Some(metric), _) => format_value(metric.value, metric.unit),
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
        "\nEach rate and latency is measured over {:?} after {:?} of warm-up, 256-byte transient \
         messages, lapin client on the same machine. Broker CPU is utime+stime of the broker \
         process from /proc/PID/stat ({TICKS_PER_SECOND} ticks/s) over the same window; \
         RSS is VmRSS from /proc/PID/status.",
        plan.duration, plan.warmup
    );
    for column in columns {
        match &column.cells {
            Err(reason) => {
                let _ = writeln!(out, "\n{} not run: {reason}", column.label);
            }
            Ok(cells) => {
                for cell in cells {
                    if let Err(err) = &cell.outcome {
                        let _ = writeln!(out, "\n{}, {}: failed: {err}", column.label, cell.title);
                    }
                }
            }
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
        assert_eq!(format_value(Some(23_412.4), "msg/s"), "23,412 msg/s");
        assert_eq!(format_value(Some(56.06), "µs/msg"), "56.1 µs/msg");
        assert_eq!(format_value(Some(394.2), "µs"), "394 µs");
        assert_eq!(format_value(None, "µs/msg"), "n/a (no broker pid)");
    }
}
