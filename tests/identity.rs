//! Identity end to end (issue 4): key acceptance, broker authentication with keys,
//! permissions, and signed commands and replies, with real `dispatch master`,
//! `dispatch-minion` and `dispatch` processes.

mod daemons;

use daemons::{Master, Minion, Operator, accepted_minion, command, next_return, within};
use dispatch_common::envelope::{Envelope, domain};
use dispatch_common::keys::KeyPair;
use dispatch_common::message::{Outcome, Reply, now_ms};
use dispatch_common::names::{COMMANDS_EXCHANGE, RESULTS_QUEUE, minion_queue};
use dispatch_common::rpc::Role;
use dispatch_common::target::Target;
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use std::os::unix::fs::PermissionsExt;

fn amqp_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

fn finished(reply: &Reply) -> &dispatch_common::message::ExecResult {
    match &reply.outcome {
        Outcome::Finished(result) => result,
        other => panic!("expected a finished job, got {other:?}"),
    }
}

fn refusal(reply: &Reply) -> &str {
    match &reply.outcome {
        Outcome::Refused { reason } => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn pending_minion_gets_in_after_accept_without_restart() {
    let master = Master::start(&[]).await;
    let minion = Minion::start(&master, "web.01", &["--group", "web"]).await;
    let fingerprint = minion.fingerprint().await;
    let refused = minion.daemon.wait_for("pending").await;
    assert!(refused.contains("dispatch key accept web.01"), "{refused}");

    let keys = master.keys().await;
    let web = keys
        .iter()
        .find(|k| k["id"] == "web.01")
        .expect("web.01 listed");
    assert_eq!(web["state"], "pending");
    assert_eq!(web["fingerprint"], fingerprint.as_str());
    assert_eq!(web["groups"], serde_json::json!(["web"]));

    let accepted = master.cli_ok(&["key", "accept", "web.01"]).await;
    assert!(accepted.contains(&fingerprint), "{accepted}");
    minion.daemon.wait_for("connected").await;
    assert_eq!(master.key_states("web.01").await, ["accepted"]);

    let operator = master.operator().await;
    let mut returns = operator.returns().await;
    let job = command(Target::pattern("web.*").unwrap(), &["echo", "hello"]);
    operator
        .send("web.01", &Operator::seal(&operator.master, &job))
        .await;
    let reply = next_return(&mut returns).await;
    assert_eq!(
        (reply.job_id, reply.minion.as_str()),
        (job.job_id, "web.01")
    );
    assert_eq!(finished(&reply).stdout, b"hello\n");
}

#[tokio::test]
async fn commands_are_queued_for_an_accepted_minion_before_it_connects() {
    let master = Master::start(&[]).await;
    let mut minion = accepted_minion(&master, "db.01", &[]).await;
    minion.daemon.terminate().await;
    let operator = master.operator().await;
    let mut returns = operator.returns().await;
    let job = command(Target::group("db").unwrap(), &["true"]);
    let job = dispatch_common::message::Command {
        target: Target::pattern("db.01").unwrap(),
        ..job
    };
    operator
        .send("db.01", &Operator::seal(&operator.master, &job))
        .await;
    minion.restart().await;
    let reply = next_return(&mut returns).await;
    assert_eq!(reply.job_id, job.job_id);
    assert!(finished(&reply).succeeded());
}

#[tokio::test]
async fn rejected_and_deleted_keys() {
    let master = Master::start(&[]).await;
    let minion = Minion::start(&master, "web.02", &[]).await;
    minion.daemon.wait_for("pending").await;
    master.cli_ok(&["key", "reject", "web.02"]).await;
    minion.daemon.wait_for("was rejected").await;
    assert_eq!(master.key_states("web.02").await, ["rejected"]);
    master.cli_ok(&["key", "delete", "web.02"]).await;
    // Deleted: the minion asks again and is pending once more.
    within("pending again", async {
        while master.key_states("web.02").await != ["pending"] {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let unknown = master.cli(&["key", "accept", "nobody"]).await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(
        unknown.stderr.contains("no pending key 'nobody'"),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn another_key_for_an_accepted_id_is_denied_and_never_replaces_it() {
    let master = Master::start(&[]).await;
    let real = accepted_minion(&master, "db.02", &[]).await;
    let real_fingerprint = real.fingerprint().await;
    let impostor = Minion::start(&master, "db.02", &[]).await;
    impostor.daemon.wait_for("denied").await;
    master.daemon.wait_for("DENIED").await;
    let keys = master.keys().await;
    let states: Vec<_> = keys.iter().filter(|k| k["id"] == "db.02").collect();
    assert_eq!(states.len(), 2);
    assert_eq!(states[0]["state"], "accepted");
    assert_eq!(states[0]["fingerprint"], real_fingerprint.as_str());
    assert_eq!(states[1]["state"], "denied");
}

#[tokio::test]
async fn commands_that_fail_verification_are_refused_and_never_run() {
    let master = Master::start(&[]).await;
    let minion = accepted_minion(&master, "web.03", &["--group", "web"]).await;
    let operator = master.operator().await;
    let mut returns = operator.returns().await;
    let scratch = master.scratch("ran");
    let touch = |name: &str| {
        let path = scratch.join(name);
        command(
            Target::group("web").unwrap(),
            &["touch", path.to_str().unwrap()],
        )
    };
    let now = now_ms();

    let forged = touch("forged");
    operator
        .send("web.03", &Operator::seal(&KeyPair::generate(), &forged))
        .await;
    let tampered = touch("tampered");
    let mut envelope =
        Envelope::decode(&Operator::seal(&operator.master, &tampered)).expect("envelope");
    let pos = envelope.payload.len() - 3;
    envelope.payload[pos] ^= 0x01;
    operator
        .send("web.03", &rmp_serde::to_vec_named(&envelope).unwrap())
        .await;
    let expired = dispatch_common::message::Command {
        issued_at_ms: now - 120_000,
        expires_at_ms: now - 1_000,
        ..touch("expired")
    };
    operator
        .send("web.03", &Operator::seal(&operator.master, &expired))
        .await;
    let future = dispatch_common::message::Command {
        issued_at_ms: now + 600_000,
        expires_at_ms: now + 660_000,
        ..touch("future")
    };
    operator
        .send("web.03", &Operator::seal(&operator.master, &future))
        .await;
    let elsewhere = dispatch_common::message::Command {
        target: Target::pattern("db.*").unwrap(),
        ..touch("elsewhere")
    };
    operator
        .send("web.03", &Operator::seal(&operator.master, &elsewhere))
        .await;
    let elsewhere_recipients = dispatch_common::message::Command {
        recipients: vec!["web.99".into()],
        ..touch("not-a-recipient")
    };
    operator
        .send(
            "web.03",
            &Operator::seal(&operator.master, &elsewhere_recipients),
        )
        .await;
    let good = touch("good");
    operator
        .send("web.03", &Operator::seal(&operator.master, &good))
        .await;

    let mut refusals = std::collections::HashMap::new();
    loop {
        let reply = next_return(&mut returns).await;
        if reply.job_id == good.job_id {
            assert!(finished(&reply).succeeded());
            break;
        }
        refusals.insert(reply.job_id, refusal(&reply).to_owned());
    }
    assert!(
        !refusals.contains_key(&forged.job_id),
        "a forged command must not be answered under the job id it claims"
    );
    for (job, word) in [
        (&expired, "expired"),
        (&future, "future"),
        (&elsewhere, "target"),
        (&elsewhere_recipients, "recipients"),
    ] {
        let reason = refusals
            .get(&job.job_id)
            .unwrap_or_else(|| panic!("no refusal for {word}: {refusals:?}"));
        assert!(reason.contains(word), "{word}: {reason}");
    }
    let ran: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(ran, ["good"], "only the good command may run");
    minion.daemon.wait_for(&forged.job_id.to_string()).await;
    minion.daemon.wait_for(&tampered.job_id.to_string()).await;
}

#[tokio::test]
async fn a_replayed_command_is_refused_also_after_a_minion_restart() {
    let master = Master::start(&[]).await;
    let mut minion = accepted_minion(&master, "web.04", &[]).await;
    let operator = master.operator().await;
    let mut returns = operator.returns().await;
    let counter = master.scratch("count").join("runs");
    let mut job = command(
        Target::pattern("web.04").unwrap(),
        &[&format!("echo run >> {}", counter.display())],
    );
    job.exec.shell = true;
    let bytes = Operator::seal(&operator.master, &job);

    operator.send("web.04", &bytes).await;
    assert!(finished(&next_return(&mut returns).await).succeeded());
    operator.send("web.04", &bytes).await;
    let again = next_return(&mut returns).await;
    assert!(refusal(&again).contains("replay"), "{again:?}");

    minion.restart().await;
    minion.daemon.wait_for("connected").await;
    operator.send("web.04", &bytes).await;
    let after_restart = next_return(&mut returns).await;
    assert!(
        refusal(&after_restart).contains("replay"),
        "{after_restart:?}"
    );
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "run\n");
}

#[tokio::test]
async fn a_minion_may_use_only_its_own_queue_and_publish_only_as_itself() {
    let master = Master::start(&[]).await;
    let _other = accepted_minion(&master, "db.03", &[]).await;
    let pair = KeyPair::generate();
    let refused = master.connect_as(&pair, "web.05", Role::Minion).await;
    let text = refused.expect_err("pending key refused").to_string();
    assert!(text.contains("pending"), "{text}");
    master.cli_ok(&["key", "accept", "web.05"]).await;
    let connection = master
        .connect_as(&pair, "web.05", Role::Minion)
        .await
        .expect("accepted key connects");

    let channel = connection.create_channel().await.unwrap();
    let theirs = channel
        .basic_consume(
            minion_queue("db.03").into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(amqp_code(&theirs.unwrap_err()), Some(403));

    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let as_master = channel
        .basic_publish(
            "".into(),
            RESULTS_QUEUE.into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_user_id("master".into()),
        )
        .await;
    let closed = match as_master {
        Ok(confirm) => confirm.await.map(drop),
        Err(e) => Err(e),
    };
    assert_eq!(amqp_code(&closed.unwrap_err()), Some(406));

    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let command = channel
        .basic_publish(
            COMMANDS_EXCHANGE.into(),
            "all".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await;
    let closed = match command {
        Ok(confirm) => confirm.await.map(drop),
        Err(e) => Err(e),
    };
    assert_eq!(amqp_code(&closed.unwrap_err()), Some(403));
}

#[tokio::test]
async fn the_master_drops_replies_not_signed_by_the_minion_they_name() {
    let master = Master::start(&[]).await;
    let _minion = accepted_minion(&master, "web.06", &[]).await;
    let operator = master.operator().await;
    let mut returns = operator.returns().await;
    let job = command(Target::pattern("web.06").unwrap(), &["true"]);
    let forged = Reply {
        job_id: job.job_id,
        minion: "web.06".into(),
        outcome: Outcome::Refused {
            reason: "forged".into(),
        },
    };
    let forged = Envelope::seal(domain::REPLY, &KeyPair::generate(), "web.06", &forged);
    operator
        .channel
        .basic_publish(
            "".into(),
            RESULTS_QUEUE.into(),
            BasicPublishOptions::default(),
            &forged,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    operator
        .send("web.06", &Operator::seal(&operator.master, &job))
        .await;
    let reply = next_return(&mut returns).await;
    assert!(
        finished(&reply).succeeded(),
        "the forged reply got through: {reply:?}"
    );
    master.daemon.wait_for("dropped a reply").await;
}

#[tokio::test]
async fn a_private_key_readable_by_others_stops_the_daemons() {
    let master = Master::start(&[]).await;
    let dir = master.scratch("loose");
    let key = dir.join("minion.key");
    KeyPair::load_or_create(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut minion = Minion::start_in(&master, "web.07", &dir, &[]).await;
    let status = minion.daemon.exit_status().await;
    assert_eq!(status.code(), Some(2));
    assert!(
        minion.daemon.printed("chmod 600"),
        "{}",
        minion.daemon.output()
    );

    let mut master = master;
    let master_key = master.data_dir().join("master.key");
    std::fs::set_permissions(&master_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let status = master.daemon.terminate().await;
    assert!(status.success(), "{}", master.daemon.output());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dispatch"))
        .arg("--data-dir")
        .arg(master.data_dir())
        .args(["master", "--listen", "127.0.0.1:0"])
        .output();
    let out = within("master refuses to start", out).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

#[tokio::test]
async fn minions_detect_a_changed_master_key() {
    let mut master = Master::start(&[]).await;
    let mut minion = accepted_minion(&master, "web.08", &[]).await;
    minion.daemon.wait_for("pinned master key").await;
    std::fs::remove_file(master.data_dir().join("master.key")).unwrap();
    master.restart().await;
    let status = minion.daemon.exit_status().await;
    assert_eq!(status.code(), Some(2), "{}", minion.daemon.output());
    assert!(
        minion.daemon.printed("master key changed"),
        "{}",
        minion.daemon.output()
    );
}

#[tokio::test]
async fn an_unknown_operator_key_is_recorded_pending_with_its_role() {
    let master = Master::start(&[]).await;
    let stranger = KeyPair::generate();
    let refused = master
        .connect_as(&stranger, "operator.eve", Role::Operator)
        .await;
    assert!(refused.unwrap_err().to_string().contains("pending"));
    let listed = master.keys().await;
    let eve = listed.iter().find(|k| k["id"] == "operator.eve").unwrap();
    assert_eq!(
        (eve["state"].as_str(), eve["role"].as_str()),
        (Some("pending"), Some("operator"))
    );
}

#[tokio::test]
async fn rejecting_a_connected_minion_cuts_it_off() {
    let master = Master::start(&[]).await;
    let minion = accepted_minion(&master, "web.10", &[]).await;
    master.cli_ok(&["key", "reject", "web.10"]).await;
    minion.daemon.wait_for("rejected").await;
    let run = master.cli(&["run", "web.10", "true"]).await;
    assert_ne!(run.code, 0, "a rejected minion is no target: {run:?}");
}

#[tokio::test]
async fn auto_accept_takes_listed_minion_fingerprints_only() {
    let dir = tempfile::tempdir().unwrap();
    let listed = KeyPair::load_or_create(&dir.path().join("listed/minion.key")).unwrap();
    let fingerprint = listed.public().fingerprint().to_string();
    let master = Master::start(&["--auto-accept-fingerprint", &fingerprint]).await;
    let auto = Minion::start_in(&master, "web.11", &dir.path().join("listed"), &[]).await;
    auto.daemon.wait_for("connected").await;
    let other = Minion::start(&master, "web.12", &[]).await;
    other.daemon.wait_for("pending").await;
    assert_eq!(master.key_states("web.11").await, ["accepted"]);
    assert_eq!(master.key_states("web.12").await, ["pending"]);
}

#[tokio::test]
async fn rpc_requests_with_a_bad_signature_or_replayed_are_refused() {
    use dispatch_common::names::MASTER_RPC_QUEUE;
    use dispatch_common::rpc::{Request, RequestBody, Response, ResponseBody};
    use futures_lite::StreamExt;

    let master = Master::start(&[]).await;
    let operator = master.operator().await;
    let operator_key = KeyPair::load(&master.data_dir().join("operator.key")).unwrap();
    let queue = dispatch_common::client::private_queue(&operator.channel, FieldTable::default())
        .await
        .unwrap();
    let mut answers = operator
        .channel
        .basic_consume(
            queue.clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ask = |bytes: Vec<u8>| {
        let channel = operator.channel.clone();
        let reply_to = queue.clone();
        async move {
            channel
                .basic_publish(
                    "".into(),
                    MASTER_RPC_QUEUE.into(),
                    BasicPublishOptions::default(),
                    &bytes,
                    BasicProperties::default().with_reply_to(reply_to),
                )
                .await
                .unwrap();
        }
    };
    let mut answer = async || -> ResponseBody {
        let delivery = within("an answer", answers.next()).await.unwrap().unwrap();
        let envelope = Envelope::decode(&delivery.data).unwrap();
        let response: Response = envelope
            .open(domain::RPC_RESPONSE, &operator.master.public())
            .expect("answers are signed by the master");
        response.body
    };

    let request = Request::new(RequestBody::ListKeys);
    let forged = Envelope::seal(
        domain::RPC,
        &KeyPair::generate(),
        "operator.local",
        &request,
    );
    ask(forged).await;
    let refused = answer().await;
    assert!(
        matches!(&refused, ResponseBody::Error(e) if e.contains("request refused")),
        "{refused:?}"
    );

    let good = Envelope::seal(domain::RPC, &operator_key, "operator.local", &request);
    ask(good.clone()).await;
    assert!(matches!(answer().await, ResponseBody::Keys(_)));
    ask(good).await;
    let replayed = answer().await;
    assert!(
        matches!(&replayed, ResponseBody::Error(e) if e.contains("replayed")),
        "{replayed:?}"
    );
}
