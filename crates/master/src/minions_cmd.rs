//! `dispatch minions`: the accepted minions, whether they are up, and when they were last
//! seen, as the master's registry and presence tracking know them.
//!
//! Text: a table with the columns ID, GROUPS, STATE (`up`|`down`), LAST SEEN (`12s ago`,
//! `never`) and VERSION (`-` when unknown).
//!
//! `--out json`: one JSON array of objects with the fields `id`, `groups` (array of
//! strings), `up` (boolean: consuming its queue now), `last_seen_ms` (Unix milliseconds
//! of its last announcement, or null) and `version` (string or null).

use crate::cli::{Output, exit};
use crate::client::{MasterClient, Operator};
use crate::render;
use dispatch_common::message::now_ms;
use dispatch_common::rpc::{MinionInfo, RequestBody, ResponseBody};
use std::process::ExitCode;

/// Asks the master at `url` for its minions and prints them.
pub async fn run(url: &str, operator: Operator, out: Output) -> anyhow::Result<ExitCode> {
    let mut client = MasterClient::connect(url, operator).await?;
    let answer = client.call(RequestBody::Minions).await;
    client.close().await;
    match answer? {
        ResponseBody::Minions(minions) => {
            match out {
                Output::Text => print!("{}", minion_table(&minions, now_ms())),
                Output::Json => println!("{}", minions_json(&minions)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        ResponseBody::Error(reason) => {
            eprintln!("dispatch: {reason}");
            Ok(ExitCode::from(exit::FAILED))
        }
        other => anyhow::bail!("unexpected answer from the master: {other:?}"),
    }
}

/// Minions as an aligned table, one line each, ages counted back from `now_ms`.
pub fn minion_table(minions: &[MinionInfo], now_ms: u64) -> String {
    if minions.is_empty() {
        return "no accepted minions yet (see `dispatch key list`)\n".to_owned();
    }
    let rows: Vec<[String; 5]> = minions
        .iter()
        .map(|m| {
            [
                m.id.clone(),
                render::names(&m.groups),
                if m.up { "up" } else { "down" }.to_owned(),
                m.last_seen_ms
                    .map_or_else(|| "never".to_owned(), |ms| render::ago(ms, now_ms)),
                m.version.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    render::table(["ID", "GROUPS", "STATE", "LAST SEEN", "VERSION"], &rows)
}

/// Minions as the documented JSON array.
pub fn minions_json(minions: &[MinionInfo]) -> serde_json::Result<String> {
    serde_json::to_string_pretty(minions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minion(id: &str, up: bool, last_seen_ms: Option<u64>) -> MinionInfo {
        MinionInfo {
            id: id.to_owned(),
            groups: vec!["web".to_owned(), "eu".to_owned()],
            up,
            last_seen_ms,
            version: up.then(|| "0.1.0".to_owned()),
        }
    }

    #[test]
    fn table_shows_state_age_and_unknowns() {
        let table = minion_table(
            &[
                minion("web.01", true, Some(88_000)),
                minion("web.02", false, None),
            ],
            100_000,
        );
        assert_eq!(
            table,
            "ID      GROUPS  STATE  LAST SEEN  VERSION\n\
             web.01  web,eu  up     12s ago    0.1.0\n\
             web.02  web,eu  down   never      -\n"
        );
    }

    #[test]
    fn no_minions_says_where_to_look() {
        assert!(minion_table(&[], 0).starts_with("no accepted minions yet"));
    }

    #[test]
    fn json_field_names_are_the_documented_ones() {
        let json = minions_json(&[minion("web.01", true, Some(5))]).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!([{
                "id": "web.01",
                "groups": ["web", "eu"],
                "up": true,
                "last_seen_ms": 5,
                "version": "0.1.0",
            }])
        );
    }
}
