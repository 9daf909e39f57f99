//! The job cache end to end (issue 6): `dispatch job`, `dispatch jobs` and
//! `dispatch events` against a real master and real minions.

mod daemons;

use daemons::{Daemon, Master, Minion, accepted_minion};
use serde_json::Value;

/// A master with web.01 (group web) and db.01 (group db), both connected.
async fn cluster() -> (Master, Vec<Minion>) {
    let master = Master::start(&[]).await;
    let mut minions = Vec::new();
    for (id, group) in [("web.01", "web"), ("db.01", "db")] {
        minions.push(accepted_minion(&master, id, &["--group", group]).await);
    }
    (master, minions)
}

/// Runs `dispatch run --async ARGS` and returns the job id it printed.
async fn submit(master: &Master, args: &[&str]) -> String {
    let mut all = vec!["run", "--async"];
    all.extend_from_slice(args);
    let out = master.cli_ok(&all).await;
    out.trim().to_owned()
}

/// `dispatch job ARGS --out json`, parsed, with the exit code.
async fn job(master: &Master, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["job"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", "json"]);
    let out = master.cli(&all).await;
    let value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("dispatch job: {e}: {out:?}"));
    (out.code, value)
}

fn states(job: &Value) -> Vec<(String, String)> {
    job["minions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["minion"].as_str().unwrap().to_owned(),
                m["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn an_async_run_is_complete_in_dispatch_job_wait() {
    let (master, _minions) = cluster().await;
    let id = submit(&master, &["*", "echo", "cached"]).await;
    let (code, view) = job(&master, &[&id, "--wait", "--timeout", "20s"]).await;
    assert_eq!(code, 0, "{view}");
    assert_eq!(
        states(&view),
        pairs(&[("db.01", "succeeded"), ("web.01", "succeeded")])
    );
    assert!(
        view["minions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["stdout"] == "cached\n")
    );
    assert_eq!(view["submitted_by"], "operator.local");
    assert_eq!(view["origin"], "cli");
    assert_eq!(view["target"], "*");
    assert_eq!(view["command"], serde_json::json!(["echo", "cached"]));
    assert!(
        view["timeout_ms"].is_u64() && view["ttl_ms"].is_u64(),
        "{view}"
    );
}

#[tokio::test]
async fn a_late_return_from_an_offline_minion_lands_in_its_job() {
    let (master, mut minions) = cluster().await;
    minions[1].daemon.terminate().await;
    let run = master
        .cli(&["run", "--out", "json", "*", "echo", "late"])
        .await;
    assert_eq!(run.code, 3, "{run:?}");
    let first: Value = serde_json::from_str(run.stdout.lines().next().unwrap()).unwrap();
    let id = first["job_id"].as_str().unwrap().to_owned();
    let (code, view) = job(&master, &[&id]).await;
    assert_eq!(code, 3);
    assert_eq!(
        states(&view),
        pairs(&[("db.01", "queued"), ("web.01", "succeeded")])
    );

    minions[1].restart().await;
    let (code, view) = job(&master, &[&id, "--wait", "--timeout", "20s"]).await;
    assert_eq!(code, 0, "{view}");
    assert_eq!(
        states(&view),
        pairs(&[("db.01", "succeeded"), ("web.01", "succeeded")])
    );
}

#[tokio::test]
async fn a_command_that_expired_unseen_shows_as_expired() {
    let (master, mut minions) = cluster().await;
    minions[1].daemon.terminate().await;
    let id = submit(&master, &["--ttl", "300ms", "db.01", "true"]).await;
    // The TTL is a deadline: `--wait` returns when it passes and the state settles.
    let (code, view) = job(&master, &[&id, "--wait", "--timeout", "20s"]).await;
    assert_eq!(code, 3, "{view}");
    assert_eq!(states(&view), pairs(&[("db.01", "expired")]));
}

#[tokio::test]
async fn jobs_are_found_by_suffix_and_a_short_ambiguous_prefix_is_explained() {
    let (master, _minions) = cluster().await;
    // Two jobs a moment apart share their first 8 digits (they change every ~65 s);
    // should the pair straddle such a change, the next pair does not.
    let (mut first, mut second) = (String::new(), String::new());
    for _ in 0..3 {
        first = submit(&master, &["web.01", "true"]).await;
        second = submit(&master, &["web.01", "true"]).await;
        if first[..8] == second[..8] {
            break;
        }
    }
    let hex = second.replace('-', "");
    let (_, view) = job(&master, &[&hex[20..]]).await;
    assert_eq!(view["job_id"], second.as_str());
    let prefix = &hex[..8];
    assert!(first.replace('-', "").starts_with(prefix));
    let ambiguous = master.cli(&["job", prefix]).await;
    assert_eq!(ambiguous.code, 1, "{ambiguous:?}");
    assert!(ambiguous.stderr.contains("several jobs"), "{ambiguous:?}");
    let short = master.cli(&["job", "abc"]).await;
    assert_eq!(short.code, 2, "{short:?}");
}

#[tokio::test]
async fn dispatch_jobs_lists_newest_first_and_filters() {
    let (master, mut minions) = cluster().await;
    let web = submit(&master, &["web.*", "true"]).await;
    let fails = master.cli(&["run", "-G", "db", "false"]).await;
    assert_eq!(fails.code, 1);
    minions[1].daemon.terminate().await;
    let queued = submit(&master, &["db.01", "true"]).await;

    let list = |args: &'static [&'static str]| {
        let master = &master;
        async move {
            let mut all = vec!["jobs", "--out", "json"];
            all.extend_from_slice(args);
            let out = master.cli_ok(&all).await;
            let jobs: Vec<Value> = serde_json::from_str(&out).unwrap();
            jobs
        }
    };
    let all = list(&[]).await;
    assert_eq!(all.len(), 3);
    assert_eq!(all[0]["job_id"], queued.as_str(), "newest first");
    assert_eq!(all[2]["job_id"], web.as_str());
    let failed = list(&["--status", "failed"]).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["counts"]["failed"], 1);
    let by_target = list(&["--target", "web.*"]).await;
    assert_eq!(by_target.len(), 1);
    assert_eq!(by_target[0]["job_id"], web.as_str());
    assert_eq!(list(&["--limit", "2"]).await.len(), 2);
    assert_eq!(list(&["--since", "1h"]).await.len(), 3);
    let bad = master.cli(&["jobs", "--status", "sideways"]).await;
    assert_eq!(bad.code, 2);
}

#[tokio::test]
async fn the_job_history_survives_a_master_restart() {
    let (mut master, minions) = cluster().await;
    let id = submit(&master, &["*", "echo", "kept"]).await;
    let (code, _) = job(&master, &[&id, "--wait", "--timeout", "20s"]).await;
    assert_eq!(code, 0);
    master.restart().await;
    for minion in &minions {
        minion.daemon.wait_for_nth("connected to", 2).await;
    }
    let (code, view) = job(&master, &[&id]).await;
    assert_eq!(code, 0, "{view}");
    assert_eq!(
        states(&view),
        pairs(&[("db.01", "succeeded"), ("web.01", "succeeded")])
    );
}

#[tokio::test]
async fn dispatch_events_streams_new_jobs_returns_and_minions() {
    let (master, mut minions) = cluster().await;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dispatch"));
    command.arg("--data-dir").arg(master.data_dir()).args([
        "--master",
        &master.url(),
        "events",
        "--out",
        "json",
    ]);
    let events = Daemon::spawn("dispatch events", command);
    events.wait_for("watching events").await;

    let id = submit(&master, &["web.01", "echo", "seen"]).await;
    let hex = id.replace('-', "");
    let new = events.wait_for("\"job_new\"").await;
    assert!(new.contains(&id) || new.contains(&hex), "{new}");
    let returned = events.wait_for("\"job_return\"").await;
    let returned: Value = serde_json::from_str(&returned).unwrap();
    assert_eq!(returned["minion"], "web.01");
    assert_eq!(returned["stdout"], "seen\n");

    minions[1].daemon.terminate().await;
    let down = events.wait_for("\"down\"").await;
    assert!(down.contains("db.01"), "{down}");
}
