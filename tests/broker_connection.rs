//! Connections and channels over real TCP with lapin: open and close, tuning (heartbeat,
//! frame_max), authentication, many connections and channels, and what the broker process
//! does on SIGTERM and with its command-line flags.

mod support;

use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use support::*;

#[tokio::test]
async fn a_client_connects_opens_a_channel_and_closes_cleanly() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    assert!(conn.status().connected());
    assert_eq!(conn.status().vhost().as_str(), "/");

    let ch = channel(&conn).await;
    assert!(ch.status().connected());
    timeout(ch.close(200, "bye".into()))
        .await
        .expect("channel.close answered with close-ok");
    assert!(!ch.status().connected());

    timeout(conn.close(200, "bye".into()))
        .await
        .expect("connection.close answered with close-ok");
    assert!(conn.status().closed());
}

#[tokio::test]
async fn a_closed_channel_leaves_its_connection_and_other_channels_working() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let first = channel(&conn).await;
    let second = channel(&conn).await;
    assert_ne!(first.id(), second.id());
    timeout(first.close(200, "done".into())).await.unwrap();

    let name = unique("after-close");
    let queue = declare_queue_with(
        &second,
        &name,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(queue.name().as_str(), name);
    let third = channel(&conn).await;
    assert!(third.status().connected());
}

#[tokio::test]
async fn the_client_heartbeat_wins_when_it_asks_for_a_shorter_one() {
    let broker = TestBroker::start().await;
    let conn = connect_url(&format!("{}?heartbeat=5", broker.url()))
        .await
        .expect("connect with heartbeat=5");
    assert_eq!(conn.configuration().heartbeat(), 5);
}

#[tokio::test]
async fn a_client_without_heartbeat_preference_gets_the_broker_proposal() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    // lapin takes the broker's proposal when it has none of its own; RabbitMQ and the
    // embedded broker both propose a non-zero heartbeat by default.
    assert!(conn.configuration().heartbeat() > 0);
}

#[tokio::test]
async fn frame_max_is_negotiated_down_to_the_client_request() {
    let broker = TestBroker::start().await;
    let conn = connect_url(&format!("{}?frame_max=16384", broker.url()))
        .await
        .expect("connect with frame_max=16384");
    assert_eq!(conn.configuration().frame_max(), 16384);

    // A message larger than one frame still arrives whole (body split into frames).
    let ch = confirm_channel(&conn).await;
    let name = unique("split-body");
    declare_queue_with(
        &ch,
        &name,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await;
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    publish(&ch, "", &name, &payload).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.data, payload);
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_403_access_refused() {
    let broker = TestBroker::start().await;
    let (user, _) = broker.credentials();
    let error = connect_url(&broker.url_for(user, "definitely-not-the-password"))
        .await
        .expect_err("a wrong password must not connect");
    assert_eq!(amqp_code(&error), Some(403), "got: {error}");
}

#[tokio::test]
async fn an_unknown_user_is_refused_with_403_access_refused() {
    let broker = TestBroker::start().await;
    let error = connect_url(&broker.url_for(&unique("nobody"), "secret"))
        .await
        .expect_err("an unknown user must not connect");
    assert_eq!(amqp_code(&error), Some(403), "got: {error}");
}

#[tokio::test]
async fn fifty_connections_with_three_channels_each_work_at_once() {
    let broker = TestBroker::start().await;
    let queue = unique("many-conns");
    {
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        declare_queue(&ch, &queue).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let url = broker.url();
        let queue = queue.clone();
        tasks.spawn(async move {
            let conn = connect_url(&url).await.expect("connect");
            let mut channels = Vec::new();
            for j in 0..3 {
                let ch = confirm_channel(&conn).await;
                publish(&ch, "", &queue, format!("{i}/{j}").as_bytes()).await;
                channels.push(ch);
            }
            timeout(conn.close(200, "done".into()))
                .await
                .expect("close");
        });
    }
    while let Some(result) = timeout(tasks.join_next()).await {
        result.expect("a connection task failed");
    }

    let conn = connect(&broker).await;
    assert_eq!(queue_exists(&conn, &queue).await.unwrap(), 150);
    let ch = channel(&conn).await;
    timeout(ch.queue_delete(queue.as_str().into(), Default::default()))
        .await
        .unwrap();
}

#[tokio::test]
async fn one_connection_opens_two_hundred_channels() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let mut channels = Vec::new();
    for _ in 0..200 {
        channels.push(channel(&conn).await);
    }
    let mut ids: Vec<u16> = channels.iter().map(|c| c.id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    for ch in &channels {
        timeout(ch.basic_qos(1, Default::default()))
            .await
            .expect("every channel answers");
    }
}

#[tokio::test]
async fn sigterm_closes_connected_clients_with_320_connection_forced_and_exits_zero() {
    let Some(mut broker) = TestBroker::start_process(
        "sigterm_closes_connected_clients_with_320_connection_forced_and_exits_zero",
        &[],
    )
    .await
    else {
        return;
    };
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let name = unique("sigterm");
    declare_queue(&ch, &name).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;

    let status = broker.stop().await;
    assert!(status.success(), "dispatch-broker exited with {status}");

    let error = consumer_error(&mut consumer).await;
    assert_eq!(amqp_code(&error), Some(320), "got: {error}");
}

#[tokio::test]
async fn the_heartbeat_flag_sets_the_broker_proposal() {
    let Some(broker) = TestBroker::start_process(
        "the_heartbeat_flag_sets_the_broker_proposal",
        &["--heartbeat", "7"],
    )
    .await
    else {
        return;
    };
    let conn = connect(&broker).await;
    assert_eq!(conn.configuration().heartbeat(), 7);
}

#[tokio::test]
async fn the_frame_max_flag_sets_the_broker_proposal() {
    let Some(broker) = TestBroker::start_process(
        "the_frame_max_flag_sets_the_broker_proposal",
        &["--frame-max", "16384"],
    )
    .await
    else {
        return;
    };
    let conn = connect(&broker).await;
    assert_eq!(conn.configuration().frame_max(), 16384);
}

#[tokio::test]
async fn configured_users_log_in_and_no_guest_refuses_guest() {
    let Some(broker) = TestBroker::start_process(
        "configured_users_log_in_and_no_guest_refuses_guest",
        &["--user", "alice:wonderland", "--no-guest"],
    )
    .await
    else {
        return;
    };
    let conn = connect_url(&broker.url_for("alice", "wonderland"))
        .await
        .expect("a configured user logs in");
    channel(&conn).await;

    let error = connect_url(&broker.url_for("alice", "looking-glass"))
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(amqp_code(&error), Some(403), "got: {error}");

    let error = connect_url(&broker.url_for("guest", "guest"))
        .await
        .expect_err("guest is refused with --no-guest");
    assert_eq!(amqp_code(&error), Some(403), "got: {error}");
}

#[tokio::test]
async fn a_killed_broker_drops_its_clients_connections() {
    let Some(mut broker) =
        TestBroker::start_process("a_killed_broker_drops_its_clients_connections", &[]).await
    else {
        return;
    };
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let name = unique("killed");
    declare_queue(&ch, &name).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    broker.kill().await;
    let error = consumer_error(&mut consumer).await;
    assert!(error.is_io_error(), "expected an I/O error, got: {error}");
}
