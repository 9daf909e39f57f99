//! A filling disk. Below `--disk-free-limit`, publishing connections are blocked
//! (`connection.blocked`) until space is freed, as RabbitMQ does. With the limit off, a
//! full disk makes the store's writes fail: publishes waiting on them are nacked, the
//! failure is logged, and the broker keeps serving. The data dir is a small tmpfs
//! ([`tiny_disk`]).

mod support;
mod tiny_disk;

use amq_protocol::protocol::basic;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation};
use support::raw::RawConnection;
use support::*;
use tiny_disk::{TinyDisk, can_mount};

#[tokio::test]
async fn publishers_are_blocked_below_the_disk_free_limit_until_space_is_freed() {
    const TEST: &str = "publishers_are_blocked_below_the_disk_free_limit_until_space_is_freed";
    if !can_mount(TEST) {
        return;
    }
    let Some(mut broker) = TestBroker::start_process(TEST, &["--disk-free-limit", "8MiB"]).await
    else {
        return;
    };
    broker.stop().await;
    let _disk = TinyDisk::mount(&broker.data_dir(), "16m");
    // Leave less than the limit free.
    let ballast = broker.data_dir().join("ballast");
    std::fs::write(&ballast, vec![0u8; 12 << 20]).expect("write the ballast file");
    broker.restart().await;

    let publisher = connect(&broker).await;
    let ch = confirm_channel(&publisher).await;
    let name = unique("disk-alarm");
    declare_durable_queue(&ch, &name).await;
    let confirm = timeout(ch.basic_publish(
        "".into(),
        name.as_str().into(),
        BasicPublishOptions::default(),
        b"waits for space",
        BasicProperties::default().with_delivery_mode(2),
    ))
    .await
    .expect("basic.publish");
    eventually("the publisher is told it is blocked", || async {
        publisher.status().blocked()
    })
    .await;
    let other = connect(&broker).await;
    assert_eq!(
        queue_exists(&other, &name).await.expect("queue"),
        0,
        "nothing is read from a blocked publisher"
    );
    assert!(
        broker.log().contains("disk alarm"),
        "the alarm is logged; stderr:\n{}",
        broker.log()
    );
    // A client that publishes while held back and then leaves gave up: its publish is
    // dropped, not done once space is freed (the count below stays 1).
    let (mut quitter, _) =
        RawConnection::handshake(broker.addr(), broker.credentials(), 131_072, 0).await;
    quitter.open_channel(1).await;
    let persistent = basic::AMQPProperties::default().with_delivery_mode(2);
    quitter.publish(1, &name, b"given up", persistent).await;
    drop(quitter);
    eventually("the broker sees the held-back client leave", || async {
        broker.log().contains("the client left while held back")
    })
    .await;

    std::fs::remove_file(&ballast).expect("remove the ballast file");
    assert!(
        timeout(confirm).await.expect("a confirm").is_ack(),
        "the publish goes through once space is freed"
    );
    assert!(!publisher.status().blocked());
    assert_eq!(queue_exists(&other, &name).await.expect("queue"), 1);
    broker.stop().await;
}

#[tokio::test]
async fn a_full_disk_nacks_persistent_publishes_and_the_broker_keeps_serving() {
    const TEST: &str = "a_full_disk_nacks_persistent_publishes_and_the_broker_keeps_serving";
    if !can_mount(TEST) {
        return;
    }
    // The disk alarm would block the publisher first: this test is about writes failing.
    let Some(mut broker) = TestBroker::start_process(TEST, &["--disk-free-limit", "0"]).await
    else {
        return;
    };
    broker.stop().await;
    let _disk = TinyDisk::mount(&broker.data_dir(), "1m");
    broker.restart().await;

    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let name = unique("disk-full");
    declare_durable_queue(&ch, &name).await;
    let body = vec![7u8; 64 * 1024];
    let mut nacked = false;
    for _ in 0..64 {
        let confirm = timeout(ch.basic_publish(
            "".into(),
            name.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_delivery_mode(2),
        ))
        .await
        .expect("basic.publish");
        if let Confirmation::Nack(_) = timeout(confirm).await.expect("a confirm") {
            nacked = true;
            break;
        }
    }
    assert!(
        nacked,
        "64 × 64 KiB persistent messages on a 1 MiB disk were all acked"
    );
    assert!(
        broker.log().contains("writing the message log failed"),
        "the failure is logged; stderr:\n{}",
        broker.log()
    );

    // Still serving: a transient message is routed and confirmed.
    let other = unique("still-serving");
    declare_queue(&ch, &other).await;
    publish(&ch, "", &other, b"hello").await;
    assert_eq!(queue_exists(&conn, &other).await.expect("queue"), 1);
    broker.stop().await;
}
