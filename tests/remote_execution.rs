//! Remote execution end to end (issue 5): `dispatch run` through a real master to real
//! minion processes — targeting, output, exit codes, timeouts, truncation, offline
//! minions and TTLs, at-most-once across a minion crash, a result kept across a minion
//! stop, and a master restart (minions come back, a rolling batch goes on).

mod daemons;
mod tiny_disk;

use daemons::{Master, Minion, accepted_minion, eventually, next_return};
use dispatch_common::message::Outcome;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A master with web.01, web.02 (group web) and db.01 (group db), all connected.
async fn cluster() -> (Master, Vec<Minion>) {
    let master = Master::start(&[]).await;
    let mut minions = Vec::new();
    for (id, group) in [("web.01", "web"), ("web.02", "web"), ("db.01", "db")] {
        minions.push(accepted_minion(&master, id, &["--group", group]).await);
    }
    (master, minions)
}

/// The JSON objects `dispatch run --out json` printed, one per line.
fn objects(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The minion ids of `objects`, sorted, with their status.
fn statuses(objects: &[Value]) -> Vec<(String, String)> {
    let mut list: Vec<_> = objects
        .iter()
        .map(|o| {
            (
                o["minion"].as_str().unwrap().to_owned(),
                o["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    list.sort();
    list
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A shell script that notes its start in `runs`, waits until `gate` exists (the test
/// creates it when the job may finish), then prints `output`.
fn gated(runs: &Path, gate: &Path, output: &str) -> String {
    format!(
        "echo run >> {}; while [ ! -e {} ]; do sleep 0.05; done; printf '{output}'",
        runs.display(),
        gate.display()
    )
}

/// A gated job (see [`gated`]) started on `minion` and running: its id, its gate and
/// the file that counts its runs.
struct GatedJob {
    id: String,
    gate: PathBuf,
    runs: PathBuf,
}

async fn start_gated(master: &Master, minion: &Minion, output: &str) -> GatedJob {
    let scratch = master.scratch("gated");
    let (gate, runs) = (scratch.join("gate"), scratch.join("runs"));
    let script = gated(&runs, &gate, output);
    let started = master
        .cli(&["run", "--async", "--shell", &minion.id, &script])
        .await;
    assert_eq!(started.code, 0, "{started:?}");
    let id = started.stdout.trim().to_owned();
    minion.daemon.wait_for(&format!("job {id}: running")).await;
    GatedJob { id, gate, runs }
}

/// Stops `minion`, which holds a result it could not send, and checks it kept it.
async fn stop_keeping_the_result(minion: &mut Minion) {
    minion.daemon.terminate().await;
    assert!(
        minion.daemon.printed("sent at the next start"),
        "{}",
        minion.daemon.output()
    );
}

/// Starts `minion` again and checks that its kept result of `job` reached the master:
/// `succeeded` with `stdout`, not `interrupted`.
async fn restart_and_see_the_kept_result(
    master: &Master,
    minion: &mut Minion,
    job: &str,
    stdout: &str,
) {
    minion.restart().await;
    minion.daemon.wait_for("sending its kept result").await;
    let view = master
        .cli_ok(&["job", job, "--wait", "--timeout", "10s", "--out", "json"])
        .await;
    let view: Value = serde_json::from_str(&view).unwrap();
    let answer = &view["minions"][0];
    assert_eq!(
        (answer["status"].as_str(), answer["stdout"].as_str()),
        (Some("succeeded"), Some(stdout)),
        "the result, not \"interrupted\": {view}"
    );
}

#[tokio::test]
async fn targets_by_pattern_group_list_and_star() {
    let (master, _minions) = cluster().await;
    let run = master
        .cli(&["run", "--out", "json", "web.*", "echo", "hi"])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let out = objects(&run.stdout);
    assert_eq!(
        statuses(&out),
        pairs(&[("web.01", "succeeded"), ("web.02", "succeeded")])
    );
    assert!(out.iter().all(|o| o["stdout"] == "hi\n"));

    let group = master
        .cli(&["run", "--out", "json", "-G", "db", "true"])
        .await;
    assert_eq!(
        statuses(&objects(&group.stdout)),
        pairs(&[("db.01", "succeeded")])
    );
    let list = master
        .cli(&["run", "--out", "json", "-L", "web.02,db.01", "true"])
        .await;
    assert_eq!(
        statuses(&objects(&list.stdout)),
        pairs(&[("db.01", "succeeded"), ("web.02", "succeeded")])
    );
    let all = master.cli(&["run", "--out", "json", "*", "true"]).await;
    assert_eq!(objects(&all.stdout).len(), 3, "{all:?}");

    let none = master.cli(&["run", "mail.*", "true"]).await;
    assert_ne!(none.code, 0);
    assert!(
        none.stderr.contains("matches no accepted minion"),
        "{none:?}"
    );
    let bad = master.cli(&["run", "web/*", "true"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
}

#[tokio::test]
async fn exit_codes_output_and_text_summary() {
    let (master, _minions) = cluster().await;
    let failed = master
        .cli(&[
            "run",
            "--out",
            "json",
            "--shell",
            "web.*",
            "echo out; echo err >&2; exit 3",
        ])
        .await;
    assert_eq!(failed.code, 1, "{failed:?}");
    for object in objects(&failed.stdout) {
        assert_eq!(object["status"], "failed");
        assert_eq!(object["exit_code"], 3);
        assert_eq!(
            (object["stdout"].as_str(), object["stderr"].as_str()),
            (Some("out\n"), Some("err\n"))
        );
    }
    let scratch = master.scratch("cwd");
    let env = master
        .cli(&[
            "run",
            "--out",
            "json",
            "--env",
            "GREETING=hi there",
            "--cwd",
            scratch.to_str().unwrap(),
            "--shell",
            "db.01",
            "echo \"$GREETING\"; pwd",
        ])
        .await;
    let object = &objects(&env.stdout)[0];
    let expected = format!("hi there\n{}\n", scratch.display());
    assert_eq!(
        object["stdout"].as_str(),
        Some(expected.as_str()),
        "{env:?}"
    );
    let text = master.cli(&["run", "db.01", "echo", "plain text"]).await;
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout.contains("db.01") && text.stdout.contains("plain text"),
        "{text:?}"
    );
    let missing = master
        .cli(&["run", "--out", "json", "db.01", "no-such-command-here"])
        .await;
    assert_eq!(missing.code, 1);
    let object = &objects(&missing.stdout)[0];
    assert!(
        object["error"].as_str().unwrap().contains("not found"),
        "{object}"
    );
}

#[tokio::test]
async fn a_command_past_its_exec_timeout_is_killed_with_its_process_group() {
    let (master, _minions) = cluster().await;
    let marker = master.scratch("group").join("survivor");
    let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
    let run = master
        .cli(&[
            "run",
            "--out",
            "json",
            "--exec-timeout",
            "300ms",
            "--shell",
            "db.01",
            &script,
        ])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    let object = &objects(&run.stdout)[0];
    assert_eq!(object["status"], "failed");
    assert!(object["signal"].is_number(), "{object}");
    // The background child was in the group: it must not outlive the kill.
    let later = master.cli(&["run", "db.01", "sleep", "2.5"]).await;
    assert_eq!(later.code, 0);
    assert!(!marker.exists(), "a process of the killed group survived");
}

#[tokio::test]
async fn output_beyond_the_limit_is_cut_and_marked() {
    let master = Master::start(&[]).await;
    let _minion = accepted_minion(&master, "web.09", &["--max-output", "1KiB"]).await;
    let run = master
        .cli(&[
            "run",
            "--out",
            "json",
            "web.09",
            "head",
            "-c",
            "100000",
            "/dev/zero",
        ])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let object = &objects(&run.stdout)[0];
    assert_eq!(object["stdout_truncated"], true);
    assert_eq!(object["stdout"].as_str().unwrap().len(), 1024);
}

#[tokio::test]
async fn an_offline_minion_gets_its_command_when_it_comes_back() {
    let (master, mut minions) = cluster().await;
    minions[2].daemon.terminate().await;
    let operator = master.operator().await;
    let mut returns = operator.returns().await;
    let run = master
        .cli(&[
            "run",
            "--out",
            "json",
            "--timeout",
            "60s",
            "*",
            "echo",
            "back",
        ])
        .await;
    assert_eq!(
        run.code, 3,
        "online minions answer, the offline one is queued: {run:?}"
    );
    let out = objects(&run.stdout);
    assert_eq!(
        statuses(&out),
        pairs(&[
            ("db.01", "offline"),
            ("web.01", "succeeded"),
            ("web.02", "succeeded")
        ])
    );
    let job = out[0]["job_id"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        next_return(&mut returns).await;
    }
    minions[2].restart().await;
    let late = next_return(&mut returns).await;
    assert_eq!(
        (late.minion.as_str(), late.job_id.to_string()),
        ("db.01", job)
    );
    assert!(matches!(late.outcome, Outcome::Finished(ref r) if r.stdout == b"back\n"));
}

#[tokio::test]
async fn a_command_past_its_ttl_never_runs() {
    let (master, mut minions) = cluster().await;
    minions[2].daemon.terminate().await;
    let marker = master.scratch("ttl").join("ran");
    let run = master
        .cli(&[
            "run",
            "--ttl",
            "500ms",
            "db.01",
            "touch",
            marker.to_str().unwrap(),
        ])
        .await;
    assert_eq!(run.code, 3, "{run:?}");
    // The TTL is a deadline: let it pass, then bring the minion back.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    minions[2].restart().await;
    minions[2].daemon.wait_for("connected").await;
    let after = master.cli(&["run", "db.01", "true"]).await;
    assert_eq!(after.code, 0, "{after:?}");
    assert!(!marker.exists(), "the expired command ran");
}

#[tokio::test]
async fn a_minion_killed_mid_job_reports_it_interrupted_and_never_runs_it_again() {
    let (master, mut minions) = cluster().await;
    let operator = master.operator().await;
    let mut returns = operator.returns().await;
    let counter = master.scratch("mid").join("count");
    let script = format!("echo run >> {}; sleep 30", counter.display());
    let started = master
        .cli(&["run", "--async", "--shell", "web.01", &script])
        .await;
    assert_eq!(started.code, 0, "{started:?}");
    minions[0].daemon.wait_for("running").await;
    eventually("the job starts", || counter.exists()).await;
    minions[0].daemon.kill().await;
    minions[0].restart().await;
    let reply = next_return(&mut returns).await;
    assert_eq!(reply.minion, "web.01");
    assert_eq!(reply.outcome, Outcome::Interrupted);
    let again = master.cli(&["run", "web.01", "true"]).await;
    assert_eq!(again.code, 0);
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "run\n");
}

#[tokio::test]
async fn a_result_that_could_not_be_sent_before_a_stop_is_sent_at_the_next_start() {
    let mut master = Master::start(&[]).await;
    let mut minion = accepted_minion(&master, "web.01", &[]).await;
    let job = start_gated(&master, &minion, "kept").await;
    // The master and its broker go away; the job finishes meanwhile, and the minion is
    // stopped before it could send the result.
    let down = master.daemon.terminate().await;
    assert!(down.success(), "{down}\n{}", master.daemon.output());
    std::fs::write(&job.gate, b"").unwrap();
    minion
        .daemon
        .wait_for(&format!("job {}: finished", job.id))
        .await;
    stop_keeping_the_result(&mut minion).await;
    master.restart().await;
    restart_and_see_the_kept_result(&master, &mut minion, &job.id, "kept").await;
    let kept = minion.data_dir.join("kept-results");
    eventually("the sent result is forgotten", || {
        std::fs::read_dir(&kept).is_ok_and(|mut files| files.next().is_none())
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&job.runs).unwrap(),
        "run\n",
        "ran once"
    );
}

#[tokio::test]
async fn a_result_held_back_by_the_broker_when_the_minion_stops_is_sent_at_the_next_start() {
    const TEST: &str =
        "a_result_held_back_by_the_broker_when_the_minion_stops_is_sent_at_the_next_start";
    if !tiny_disk::can_mount(TEST) {
        return;
    }
    let (master, _disk) = Master::start_prepared(&["--disk-free-limit", "16MiB"], |dir| {
        tiny_disk::TinyDisk::mount(dir, "32m")
    })
    .await;
    let mut minion = accepted_minion(&master, "web.01", &[]).await;
    let job = start_gated(&master, &minion, "held").await;
    // Fill the master's disk past the limit: the broker holds back every publisher, so
    // the result the job is about to send waits, and the minion is stopped meanwhile.
    let ballast = master.data_dir().join("ballast");
    std::fs::write(&ballast, vec![0u8; 24 << 20]).expect("write the ballast file");
    master.daemon.wait_for("disk alarm:").await;
    std::fs::write(&job.gate, b"").unwrap();
    minion.daemon.wait_for("holds back").await;
    stop_keeping_the_result(&mut minion).await;
    std::fs::remove_file(&ballast).unwrap();
    master.daemon.wait_for("disk alarm cleared").await;
    restart_and_see_the_kept_result(&master, &mut minion, &job.id, "held").await;
}

#[tokio::test]
async fn minions_come_back_by_themselves_after_a_master_restart() {
    let (mut master, minions) = cluster().await;
    master.restart().await;
    for minion in &minions {
        minion.daemon.wait_for_nth("connected to", 2).await;
    }
    let run = master.cli(&["run", "--out", "json", "*", "true"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(objects(&run.stdout).len(), 3);
}

#[tokio::test]
async fn async_batch_and_minions() {
    let (master, _minions) = cluster().await;
    let started = master.cli(&["run", "--async", "*", "true"]).await;
    assert_eq!(started.code, 0, "{started:?}");
    assert!(
        uuid::Uuid::parse_str(started.stdout.trim()).is_ok(),
        "{started:?}"
    );

    // One at a time: each minion's run (start and end times) ends before the next starts.
    let script = "date +%s%N; sleep 0.3; date +%s%N";
    let batch = master
        .cli(&[
            "run", "--out", "json", "--batch", "1", "--shell", "web.*", script,
        ])
        .await;
    assert_eq!(batch.code, 0, "{batch:?}");
    let runs = objects(&batch.stdout);
    assert_eq!(
        statuses(&runs),
        pairs(&[("web.01", "succeeded"), ("web.02", "succeeded")])
    );
    let mut spans: Vec<(u128, u128)> = runs
        .iter()
        .map(|r| {
            let times: Vec<u128> = r["stdout"]
                .as_str()
                .unwrap()
                .lines()
                .map(|l| l.parse().unwrap())
                .collect();
            (times[0], times[1])
        })
        .collect();
    spans.sort();
    assert!(spans[0].1 <= spans[1].0, "the batch overlapped: {spans:?}");

    let listed = master.cli_ok(&["minions", "--out", "json"]).await;
    let listed: Vec<Value> = serde_json::from_str(&listed).unwrap();
    let ids: Vec<_> = listed.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["db.01", "web.01", "web.02"]);
    assert!(listed.iter().all(|m| m["up"] == true), "{listed:?}");
}

#[tokio::test]
async fn a_rolling_batch_goes_on_after_a_master_restart() {
    let (mut master, minions) = cluster().await;
    let scratch = master.scratch("rolling");
    let (gate, runs) = (scratch.join("gate"), scratch.join("runs"));
    let script = gated(&runs, &gate, "");
    let started = master
        .cli(&["run", "--async", "--batch", "1", "--shell", "*", &script])
        .await;
    assert_eq!(started.code, 0, "{started:?}");
    let job = started.stdout.trim().to_owned();
    eventually("the first of the batch runs", || runs.exists()).await;
    // The master stops while the first minion runs; the other two have not been sent
    // the command yet.
    master.restart().await;
    master.daemon.wait_for("resuming a rolling batch").await;
    std::fs::write(&gate, b"").unwrap();
    let view = master
        .cli_ok(&["job", &job, "--wait", "--timeout", "10s", "--out", "json"])
        .await;
    let view: Value = serde_json::from_str(&view).unwrap();
    let statuses: Vec<_> = view["minions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["minion"].as_str().unwrap(), m["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("db.01", "succeeded"),
            ("web.01", "succeeded"),
            ("web.02", "succeeded")
        ],
        "{view}"
    );
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap(),
        "run\nrun\nrun\n",
        "each ran once"
    );
    for minion in &minions {
        assert!(
            !minion.daemon.printed("refused command"),
            "no copy was sent twice: {}",
            minion.daemon.output()
        );
    }
}

#[tokio::test]
async fn a_minion_takes_its_settings_from_a_config_file() {
    let master = Master::start(&[]).await;
    let dir = master.scratch("configured");
    let file = dir.join("minion.toml");
    let settings = format!(
        "master = \"{}\"\nid = \"app.01\"\ngroups = [\"app\"]\ndata_dir = \"{}\"\nreconnect_max = \"{}\"\n",
        master.url(),
        dir.join("data").display(),
        daemons::TEST_RECONNECT_MAX
    );
    std::fs::write(&file, settings).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dispatch-minion"));
    command.arg("--config").arg(&file);
    let minion = daemons::Daemon::spawn("dispatch-minion --config", command);
    minion.wait_for("pending").await;
    master.cli_ok(&["key", "accept", "app.01"]).await;
    minion.wait_for("connected").await;
    let run = master
        .cli(&["run", "--out", "json", "-G", "app", "true"])
        .await;
    assert_eq!(
        statuses(&objects(&run.stdout)),
        pairs(&[("app.01", "succeeded")])
    );
}

#[tokio::test]
async fn the_cli_and_the_minion_say_when_the_broker_holds_back_publishes() {
    use dispatch_common::keys::KeyPair;
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::load_or_create(&dir.path().join("web.1/minion.key")).unwrap();
    let fingerprint = key.public().fingerprint().to_string();
    // A free-space threshold no disk meets: the disk alarm is on from the start.
    let master = Master::start(&[
        "--disk-free-limit",
        "1000000GB",
        "--auto-accept-fingerprint",
        &fingerprint,
    ])
    .await;
    // The minion's first publish (its presence) is held back, and it says so.
    let mut minion = Minion::start_in(&master, "web.1", &dir.path().join("web.1"), &[]).await;
    minion
        .daemon
        .wait_for("the broker holds back this process's publishes (low on disk space)")
        .await;
    // The operator is told why at once, instead of waiting for an answer that cannot come.
    let out = master.cli(&["minions"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("the broker holds back requests (low on disk space)"),
        "{out:?}"
    );
    assert!(out.stderr.contains("--disk-free-limit"), "{out:?}");
    // A held-back minion still stops when asked, without waiting on the broker.
    let status = minion.daemon.terminate().await;
    assert!(status.success(), "{}", minion.daemon.output());
    assert!(minion.daemon.printed("stopping without telling it"));
}
