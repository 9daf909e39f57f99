//! Printing helpers shared by the CLI verbs: aligned tables, cells, times and state
//! counts.
//!
//! Verbs build their rows as strings and hand them here; nothing in this module does I/O.

use dispatch_common::rpc::MinionState;
use std::time::{Duration, UNIX_EPOCH};

/// Longest COMMAND shown in a table (`dispatch jobs`, `dispatch schedule list`), in
/// characters.
pub const COMMAND_WIDTH: usize = 40;

/// `rows` under `header` as an aligned table: columns two spaces apart, each line
/// trimmed at the end and ending in a newline.
pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut table = line(header);
    for row in rows {
        table += &line(row.each_ref().map(String::as_str));
    }
    table
}

/// A list of names for a table cell: comma-separated, or `-` when empty.
pub fn names(names: &[String]) -> String {
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(",")
    }
}

/// Unix milliseconds as an RFC 3339 time in UTC, to the second.
pub fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// How long before `now_ms` the time `ms` was, to the second: `12s ago`, `1h 3m ago`;
/// `just now` under a second (or for a time in the future, from a skewed clock).
pub fn ago(ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(ms) / 1000;
    if secs == 0 {
        return "just now".to_owned();
    }
    format!("{} ago", duration(Duration::from_secs(secs)))
}

/// A duration as a flag would take it: `30s`, `1h`, `1h 30m`.
pub fn duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// `text` as one table cell of at most `width` characters: control characters (a
/// newline in a shell line) shown as spaces, and the last character an ellipsis when
/// cut.
pub fn cut(text: &str, width: usize) -> String {
    let clean = || text.chars().map(|c| if c.is_control() { ' ' } else { c });
    if text.chars().count() <= width {
        clean().collect()
    } else {
        clean().take(width.saturating_sub(1)).chain(['…']).collect()
    }
}

/// How many minions are in each state, in [`MinionState::ALL`] order, states with none
/// left out: `2 succeeded, 1 queued`; `-` when there are none at all.
pub fn state_counts(counts: &[(MinionState, u32)]) -> String {
    let parts: Vec<String> = MinionState::ALL
        .iter()
        .filter_map(|state| {
            let n: u32 = counts
                .iter()
                .filter(|(s, _)| s == state)
                .map(|(_, n)| n)
                .sum();
            (n > 0).then(|| format!("{n} {}", state.as_str()))
        })
        .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align_to_the_widest_cell() {
        let rows = [
            ["web.01".to_owned(), "up".to_owned()],
            ["db.primary.eu".to_owned(), "down".to_owned()],
        ];
        assert_eq!(
            table(["ID", "STATE"], &rows),
            "ID             STATE\nweb.01         up\ndb.primary.eu  down\n"
        );
    }

    #[test]
    fn empty_name_lists_show_a_dash() {
        assert_eq!(names(&[]), "-");
        assert_eq!(names(&["web".into(), "eu".into()]), "web,eu");
    }

    #[test]
    fn ages_round_to_the_second() {
        assert_eq!(ago(1_000, 1_999), "just now");
        assert_eq!(ago(5_000, 1_000), "just now");
        assert_eq!(ago(0, 12_500), "12s ago");
        assert_eq!(ago(0, 3_780_000), "1h 3m ago");
    }

    #[test]
    fn state_counts_follow_the_state_order_and_skip_zeros() {
        let counts = [
            (MinionState::Queued, 1),
            (MinionState::Succeeded, 2),
            (MinionState::Failed, 0),
        ];
        assert_eq!(state_counts(&counts), "2 succeeded, 1 queued");
        assert_eq!(state_counts(&[]), "-");
    }

    #[test]
    fn cells_are_cut_to_one_line() {
        assert_eq!(cut("a\nb", 40), "a b");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abcd", 4), "abcd");
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
    }
}
