//! `dispatch key …`: the key verbs, sent to the master as signed requests, and how their
//! answers are printed.
//!
//! `dispatch key list --out json` prints one JSON array of objects with the fields `id`,
//! `role` (`minion`|`operator`), `state` (`pending`|`accepted`|`rejected`|`denied`),
//! `fingerprint`, `groups`, `first_seen_ms` and `last_seen_ms` (Unix milliseconds).

use crate::cli::{KeyCommand, Output};
use crate::client::{MasterClient, Operator};
use crate::render;
use dispatch_common::rpc::{KeyInfo, RequestBody, ResponseBody};
use std::process::ExitCode;

/// Runs one key verb against the master at `url`.
pub async fn run(url: &str, operator: Operator, verb: KeyCommand) -> anyhow::Result<ExitCode> {
    let (request, out) = match verb {
        KeyCommand::List { out } => (RequestBody::ListKeys, out),
        KeyCommand::Accept { ids, all } => (RequestBody::AcceptKeys { ids, all }, Output::Text),
        KeyCommand::Reject { id } => (RequestBody::RejectKey { id }, Output::Text),
        KeyCommand::Delete { id } => (RequestBody::DeleteKey { id }, Output::Text),
        KeyCommand::Fingerprint => unreachable!("answered locally"),
    };
    let mut client = MasterClient::connect(url, operator).await?;
    let answer = client.call(request).await;
    client.close().await;
    Ok(match answer? {
        ResponseBody::Keys(keys) => {
            match out {
                Output::Text => print!("{}", key_table(&keys)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&keys)?),
            }
            ExitCode::SUCCESS
        }
        ResponseBody::Done(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        ResponseBody::Error(reason) => {
            eprintln!("dispatch: {reason}");
            ExitCode::FAILURE
        }
        other => anyhow::bail!("unexpected answer from the master: {other:?}"),
    })
}

/// Keys as an aligned table, one line each.
fn key_table(keys: &[KeyInfo]) -> String {
    if keys.is_empty() {
        return "no keys yet\n".to_owned();
    }
    let rows: Vec<[String; 7]> = keys
        .iter()
        .map(|k| {
            [
                k.id.clone(),
                format!("{:?}", k.role).to_lowercase(),
                k.state.as_str().to_owned(),
                k.fingerprint.clone(),
                render::names(&k.groups),
                render::time(k.first_seen_ms),
                render::time(k.last_seen_ms),
            ]
        })
        .collect();
    let header = [
        "ID",
        "ROLE",
        "STATE",
        "FINGERPRINT",
        "GROUPS",
        "FIRST SEEN",
        "LAST SEEN",
    ];
    render::table(header, &rows)
}
