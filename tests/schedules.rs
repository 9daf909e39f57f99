//! Scheduled jobs end to end (issue 7): per-second schedules against a real master and
//! minion. The firing logic itself (DST, missed times, overlap) is unit-tested with a
//! controllable clock in `crates/master/src/schedule.rs`.

mod daemons;

use daemons::{Master, accepted_minion, eventually_async};
use serde_json::Value;
use std::time::Duration;

/// The jobs a schedule fired, newest first.
async fn fired(master: &Master, schedule: &str) -> Vec<Value> {
    let out = master
        .cli_ok(&["jobs", "--limit", "1000", "--out", "json"])
        .await;
    let jobs: Vec<Value> = serde_json::from_str(&out).unwrap();
    jobs.into_iter()
        .filter(|j| j["origin"] == schedule)
        .collect()
}

/// `dispatch schedule show NAME --out json`.
async fn show(master: &Master, name: &str) -> Value {
    let out = master
        .cli_ok(&["schedule", "show", name, "--out", "json"])
        .await;
    serde_json::from_str(&out).unwrap()
}

#[tokio::test]
async fn a_per_second_schedule_fires_jobs_pauses_resumes_and_survives_a_restart() {
    let mut master = Master::start(&[]).await;
    let minion = accepted_minion(&master, "web.01", &["--group", "web"]).await;

    let bad = master
        .cli(&[
            "schedule",
            "add",
            "bad",
            "--cron",
            "61 * * * *",
            "*",
            "true",
        ])
        .await;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("invalid cron expression"), "{bad:?}");

    let added = master
        .cli_ok(&[
            "schedule",
            "add",
            "tick",
            "--cron",
            "* * * * * *",
            "--out",
            "json",
            "-G",
            "web",
            "echo",
            "tick",
        ])
        .await;
    let added: Value = serde_json::from_str(&added).unwrap();
    let next: Vec<u64> = serde_json::from_value(added["next_runs_ms"].clone()).unwrap();
    assert_eq!(next.len(), 3);
    assert_eq!((next[1] - next[0], next[2] - next[1]), (1000, 1000));

    eventually_async("two firings", || async {
        fired(&master, "tick").await.len() >= 2
    })
    .await;
    let job = fired(&master, "tick").await[0]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = master
        .cli_ok(&["job", &job, "--wait", "--timeout", "20s", "--out", "json"])
        .await;
    let view: Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view["origin"], "tick");
    assert_eq!(view["minions"][0]["stdout"], "tick\n");

    master.cli_ok(&["schedule", "pause", "tick"]).await;
    let paused = fired(&master, "tick").await.len();
    // A quiet period: a paused schedule must not fire (one firing may be in flight).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(fired(&master, "tick").await.len() <= paused + 1);
    assert_eq!(show(&master, "tick").await["paused"], true);
    master.cli_ok(&["schedule", "resume", "tick"]).await;
    let resumed = fired(&master, "tick").await.len();
    eventually_async("firing again", || async {
        fired(&master, "tick").await.len() > resumed
    })
    .await;

    // Down for a few fire times: back up, it fires once for them, never a burst.
    master.restart_after(Duration::from_secs(3)).await;
    minion.daemon.wait_for_nth("connected to", 2).await;
    let listed = master.cli_ok(&["schedule", "list", "--out", "json"]).await;
    assert!(
        listed.contains("\"tick\""),
        "the schedule survives the restart: {listed}"
    );
    master.daemon.wait_for("earlier fire times missed").await;
    master.cli_ok(&["schedule", "remove", "tick"]).await;
    let gone = master.cli(&["schedule", "show", "tick"]).await;
    assert_eq!(gone.code, 1);
}

#[tokio::test]
async fn a_slow_run_makes_the_next_firings_skip_instead_of_overlapping() {
    let master = Master::start(&[]).await;
    let _minion = accepted_minion(&master, "db.01", &[]).await;
    master
        .cli_ok(&[
            "schedule",
            "add",
            "slow",
            "--cron",
            "* * * * * *",
            "db.01",
            "sleep",
            "4",
        ])
        .await;
    eventually_async("a skipped firing", || async {
        let outcome = show(&master, "slow").await["last_outcome"].to_string();
        outcome.contains("skipped")
    })
    .await;
    assert_eq!(
        fired(&master, "slow").await.len(),
        1,
        "no second run while the first runs"
    );

    let now = master
        .cli(&["schedule", "run-now", "slow", "--out", "json"])
        .await;
    assert_eq!(now.code, 0, "{now:?}");
    let started: Value = serde_json::from_str(&now.stdout).unwrap();
    assert_eq!(started["expected"], serde_json::json!(["db.01"]));
}
