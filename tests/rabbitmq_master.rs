//! The master on RabbitMQ instead of its embedded broker (`dispatch master --broker`):
//! a minion asks for its key with a signed request, is accepted, and runs a command —
//! nothing else changes. Needs the RabbitMQ that `scripts/test` starts
//! (`DISPATCH_RABBITMQ_URL`); without it the test says SKIPPED, and fails under
//! `CI=true`.

mod daemons;

use daemons::{Master, Minion};

/// The RabbitMQ to use, or `None` after a visible skip (a failure under `CI=true`).
fn rabbitmq(test: &str) -> Option<String> {
    match std::env::var("DISPATCH_RABBITMQ_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: DISPATCH_RABBITMQ_URL is not set; scripts/test starts RabbitMQ")
        }
        _ => {
            eprintln!("SKIPPED {test}: DISPATCH_RABBITMQ_URL is not set (scripts/test sets it)");
            None
        }
    }
}

#[tokio::test]
async fn a_minion_on_rabbitmq_is_accepted_and_runs_commands() {
    let Some(url) = rabbitmq("a_minion_on_rabbitmq_is_accepted_and_runs_commands") else {
        return;
    };
    let master = Master::start_external(&url).await;
    // RabbitMQ outlives test runs: a fresh id keeps runs apart.
    let id = format!("rmq.p{}", std::process::id());
    let fingerprint = master.fingerprint();
    let minion = Minion::start(&master, &id, &["--master-fingerprint", &fingerprint]).await;
    let unpinned = Minion::start(&master, "rmq.unpinned", &[]).await;
    let mut unpinned = unpinned;
    let refused = unpinned.daemon.exit_status().await;
    assert_eq!(
        refused.code(),
        Some(2),
        "an external broker needs --master-fingerprint"
    );

    within_pending(&master, &id).await;
    master.cli_ok(&["key", "accept", &id]).await;
    minion.daemon.wait_for("connected").await;
    let run = master
        .cli(&["run", "--out", "json", &id, "echo", "via rabbitmq"])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("via rabbitmq\\n"), "{run:?}");

    // An operator away from the master host asks with a key request, then gets in.
    let home = master.scratch("remote-operator");
    let remote = |args: &'static [&'static str]| {
        let (home, url, fingerprint) = (home.clone(), url.clone(), fingerprint.clone());
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dispatch"))
                .env("HOME", &home)
                .env("DISPATCH_OPERATOR_ID", "operator.remote")
                .args(["--data-dir", "/nonexistent/dispatch", "--master", &url])
                .args(["--master-fingerprint", &fingerprint])
                .args(args)
                .output();
            daemons::within("the remote operator's CLI", out)
                .await
                .unwrap()
        }
    };
    let refused = remote(&["minions"]).await;
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not an accepted operator"));
    within_pending(&master, "operator.remote").await;
    master.cli_ok(&["key", "accept", "operator.remote"]).await;
    let listed = remote(&["minions", "--out", "json"]).await;
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&id));
}

/// Waits until the minion's key request has made it pending.
async fn within_pending(master: &Master, id: &str) {
    daemons::within("the key request", async {
        while master.key_states(id).await != ["pending"] {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}
