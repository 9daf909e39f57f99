//! The basic class: qos prefetch (per consumer and global), consume (no-ack, exclusive,
//! server-generated tags), cancel, get / get-empty, ack / nack / reject with multiple and
//! requeue, redelivered flags, and recover.

mod support;

use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicQosOptions, BasicRecoverOptions, BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use support::*;

/// An exclusive queue holding `n` messages `m0..m{n-1}`, published with confirms.
async fn queue_with(conn: &Connection, label: &str, n: usize) -> String {
    let ch = confirm_channel(conn).await;
    let name = unique(label);
    declare_queue_with(
        &ch,
        &name,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    for i in 0..n {
        publish(&ch, "", &name, format!("m{i}").as_bytes()).await;
    }
    name
}

async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    timeout(ch.basic_get(queue.into(), BasicGetOptions::default()))
        .await
        .expect("basic.get")
}

#[tokio::test]
async fn consumers_receive_messages_in_order_with_server_generated_tags() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "order", 0).await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    let other = consume(&ch, &name, BasicConsumeOptions::default()).await;
    assert!(!consumer.tag().as_str().is_empty());
    assert_ne!(consumer.tag(), other.tag());
    timeout(ch.basic_cancel(other.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();

    let publisher = confirm_channel(&conn).await;
    for i in 0..5 {
        publish(&publisher, "", &name, format!("m{i}").as_bytes()).await;
    }
    let deliveries = next_deliveries(&mut consumer, 5).await;
    let bodies: Vec<String> = deliveries.iter().map(body).collect();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
    let mut tags: Vec<u64> = deliveries.iter().map(|d| d.delivery_tag).collect();
    assert!(tags.iter().all(|t| *t > 0));
    tags.dedup();
    assert_eq!(tags.len(), 5, "delivery tags are distinct");
    for d in &deliveries {
        assert_eq!(d.routing_key.as_str(), name);
        assert_eq!(d.exchange.as_str(), "");
        assert!(!d.redelivered);
    }
}

#[tokio::test]
async fn a_consumer_with_an_explicit_tag_keeps_it() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "tag", 0).await;
    let ch = channel(&conn).await;
    let consumer = timeout(ch.basic_consume(
        name.as_str().into(),
        "my-tag".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(consumer.tag().as_str(), "my-tag");
}

#[tokio::test]
async fn prefetch_count_stops_deliveries_until_an_ack() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "prefetch", 5).await;
    let ch = channel(&conn).await;
    timeout(ch.basic_qos(2, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    let first = next_deliveries(&mut consumer, 2).await;
    assert_no_delivery(&mut consumer).await;

    timeout(first[0].ack(BasicAckOptions::default()))
        .await
        .unwrap();
    let third = next_delivery(&mut consumer).await;
    assert_eq!(body(&third), "m2");
    assert_no_delivery(&mut consumer).await;

    // Ack both outstanding at once: two more arrive, then the queue is empty.
    timeout(third.ack(BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    let rest = next_deliveries(&mut consumer, 2).await;
    assert_eq!(
        rest.iter().map(body).collect::<Vec<_>>(),
        vec!["m3".to_string(), "m4".to_string()]
    );
    assert_no_delivery(&mut consumer).await;
}

#[tokio::test]
async fn per_consumer_prefetch_applies_to_each_new_consumer() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let q1 = queue_with(&conn, "perconsumer-a", 5).await;
    let q2 = queue_with(&conn, "perconsumer-b", 5).await;
    let ch = channel(&conn).await;
    timeout(ch.basic_qos(2, BasicQosOptions { global: false }))
        .await
        .unwrap();
    let mut c1 = consume(&ch, &q1, BasicConsumeOptions::default()).await;
    let mut c2 = consume(&ch, &q2, BasicConsumeOptions::default()).await;
    next_deliveries(&mut c1, 2).await;
    next_deliveries(&mut c2, 2).await;
    assert_no_delivery(&mut c1).await;
    assert_no_delivery(&mut c2).await;
}

#[tokio::test]
async fn global_prefetch_limits_the_whole_channel() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let q1 = queue_with(&conn, "global-a", 5).await;
    let q2 = queue_with(&conn, "global-b", 5).await;
    let ch = channel(&conn).await;
    timeout(ch.basic_qos(3, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let mut c1 = consume(&ch, &q1, BasicConsumeOptions::default()).await;
    let mut c2 = consume(&ch, &q2, BasicConsumeOptions::default()).await;
    // Collect whatever arrives on either consumer until both stay quiet.
    let mut got = Vec::new();
    loop {
        let mut any = false;
        for c in [&mut c1, &mut c2] {
            if let Ok(Some(Ok(d))) = tokio::time::timeout(QUIET_PERIOD, futures_next(c)).await {
                got.push(d);
                any = true;
            }
        }
        if !any {
            break;
        }
        assert!(got.len() <= 10, "more deliveries than messages");
    }
    assert_eq!(
        got.len(),
        3,
        "a global prefetch of 3 allows 3 unacked deliveries on the channel"
    );
    // Acking one lets exactly one more through.
    timeout(got[0].ack(BasicAckOptions::default()))
        .await
        .unwrap();
    let mut more = 0;
    for c in [&mut c1, &mut c2] {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(QUIET_PERIOD, futures_next(c)).await {
            more += 1;
        }
    }
    assert_eq!(more, 1);
}

async fn futures_next(c: &mut lapin::Consumer) -> Option<lapin::Result<lapin::message::Delivery>> {
    futures_lite::StreamExt::next(c).await
}

#[tokio::test]
async fn no_ack_consumers_get_everything_and_nothing_stays_unacked() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "noack", 4).await;
    let ch = channel(&conn).await;
    timeout(ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(
        &ch,
        &name,
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    // Prefetch does not apply to no-ack consumers.
    let got = next_deliveries(&mut consumer, 4).await;
    assert_eq!(body(&got[3]), "m3");
    timeout(ch.close(200, "done".into())).await.unwrap();
    // Closing the channel requeues nothing: the messages were settled on delivery.
    assert_eq!(queue_exists(&conn, &name).await.unwrap(), 0);
}

#[tokio::test]
async fn an_exclusive_consumer_makes_a_second_consumer_fail_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = unique("exclusive-consumer");
    let ch = channel(&conn).await;
    declare_queue(&ch, &name).await;
    let _owner = consume(
        &ch,
        &name,
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let other_conn = connect(&broker).await;
    let other = channel(&other_conn).await;
    assert_amqp_error(
        timeout(other.basic_consume(
            name.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await,
        403,
    );
    timeout(ch.queue_delete(name.as_str().into(), Default::default()))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_exclusive_consume_fails_with_403_when_the_queue_has_consumers() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "exclusive-late", 0).await;
    let ch = channel(&conn).await;
    let _first = consume(&ch, &name, BasicConsumeOptions::default()).await;
    let other = channel(&conn).await;
    assert_amqp_error(
        timeout(other.basic_consume(
            name.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await,
        403,
    );
}

#[tokio::test]
async fn a_cancelled_consumer_gets_nothing_more_and_messages_stay_queued() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "cancel", 0).await;
    let ch = confirm_channel(&conn).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    publish(&ch, "", &name, b"first").await;
    let first = next_delivery(&mut consumer).await;
    timeout(first.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    timeout(ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    assert_cancelled(&mut consumer).await;
    publish(&ch, "", &name, b"second").await;
    assert_eq!(queue_exists(&conn, &name).await.unwrap(), 1);
}

#[tokio::test]
async fn consuming_from_a_missing_queue_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_amqp_error(
        timeout(ch.basic_consume(
            unique("nothing-here").as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await,
        404,
    );
}

#[tokio::test]
async fn basic_get_returns_messages_with_the_remaining_count_then_get_empty() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "get", 3).await;
    let ch = channel(&conn).await;
    for (i, remaining) in [2u32, 1, 0].into_iter().enumerate() {
        let message = get(&ch, &name).await.expect("a message");
        assert_eq!(body(&message.delivery), format!("m{i}"));
        assert_eq!(message.message_count, remaining);
        assert!(!message.delivery.redelivered);
        timeout(message.delivery.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    assert!(get(&ch, &name).await.is_none(), "get-empty");
}

#[tokio::test]
async fn a_nack_with_requeue_redelivers_with_the_redelivered_flag() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "nack", 1).await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    let first = next_delivery(&mut consumer).await;
    assert!(!first.redelivered);
    timeout(first.nack(BasicNackOptions {
        requeue: true,
        multiple: false,
    }))
    .await
    .unwrap();
    let again = next_delivery(&mut consumer).await;
    assert_eq!(body(&again), "m0");
    assert!(again.redelivered);
    timeout(again.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    assert_no_delivery(&mut consumer).await;
}

#[tokio::test]
async fn a_nack_with_multiple_requeues_every_earlier_delivery() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "nack-multiple", 3).await;
    let ch = channel(&conn).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(get(&ch, &name).await.expect("a message"));
    }
    timeout(got[2].delivery.nack(BasicNackOptions {
        multiple: true,
        requeue: true,
    }))
    .await
    .unwrap();
    for i in 0..3 {
        let message = get(&ch, &name).await.expect("requeued message");
        assert_eq!(body(&message.delivery), format!("m{i}"));
        assert!(message.delivery.redelivered);
    }
    assert!(get(&ch, &name).await.is_none());
}

#[tokio::test]
async fn a_nack_or_reject_without_requeue_drops_the_message() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "drop", 2).await;
    let ch = channel(&conn).await;
    let first = get(&ch, &name).await.unwrap();
    timeout(first.delivery.reject(BasicRejectOptions { requeue: false }))
        .await
        .unwrap();
    let second = get(&ch, &name).await.unwrap();
    timeout(second.delivery.nack(BasicNackOptions {
        multiple: false,
        requeue: false,
    }))
    .await
    .unwrap();
    assert!(get(&ch, &name).await.is_none());
    timeout(ch.close(200, "done".into())).await.unwrap();
    assert_eq!(queue_exists(&conn, &name).await.unwrap(), 0);
}

#[tokio::test]
async fn a_reject_with_requeue_puts_the_message_back_redelivered() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "reject", 1).await;
    let ch = channel(&conn).await;
    let first = get(&ch, &name).await.unwrap();
    timeout(first.delivery.reject(BasicRejectOptions { requeue: true }))
        .await
        .unwrap();
    let again = get(&ch, &name).await.expect("requeued");
    assert_eq!(body(&again.delivery), "m0");
    assert!(again.delivery.redelivered);
}

#[tokio::test]
async fn an_ack_with_multiple_settles_every_earlier_delivery() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "ack-multiple", 4).await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    let got = next_deliveries(&mut consumer, 4).await;
    timeout(got[2].ack(BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    timeout(ch.close(200, "done".into())).await.unwrap();
    // Only the fourth was unacked, so only it goes back to the queue.
    let ch = channel(&conn).await;
    let left = get(&ch, &name).await.expect("the unacked one");
    assert_eq!(body(&left.delivery), "m3");
    assert!(left.delivery.redelivered);
    assert!(get(&ch, &name).await.is_none());
}

#[tokio::test]
async fn acks_in_any_order_settle_exactly_the_deliveries_they_name() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "ack-any-order", 4).await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    let got = next_deliveries(&mut consumer, 4).await;
    // The third, then the oldest, then the last: m1 stays unacknowledged.
    for i in [2, 0, 3] {
        timeout(got[i].ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    timeout(ch.close(200, "done".into())).await.unwrap();
    let ch = channel(&conn).await;
    let left = get(&ch, &name).await.expect("the unacked one");
    assert_eq!(body(&left.delivery), "m1");
    assert!(left.delivery.redelivered);
    assert!(get(&ch, &name).await.is_none());
}

#[tokio::test]
async fn an_ack_of_tag_zero_with_multiple_settles_everything_outstanding() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "ack-zero", 3).await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    next_deliveries(&mut consumer, 3).await;
    timeout(ch.basic_ack(0, BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    timeout(ch.close(200, "done".into())).await.unwrap();
    assert_eq!(queue_exists(&conn, &name).await.unwrap(), 0);
}

#[tokio::test]
async fn unacked_messages_return_redelivered_when_their_channel_closes() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "requeue-on-close", 2).await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    next_deliveries(&mut consumer, 2).await;
    timeout(ch.close(200, "done".into())).await.unwrap();
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    for i in 0..2 {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(body(&d), format!("m{i}"));
        assert!(d.redelivered);
    }
}

#[tokio::test]
async fn recover_with_requeue_redelivers_unacked_messages() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "recover", 2).await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    let first = next_deliveries(&mut consumer, 2).await;
    assert!(first.iter().all(|d| !d.redelivered));
    timeout(ch.basic_recover(BasicRecoverOptions { requeue: true }))
        .await
        .expect("basic.recover-ok");
    let again = next_deliveries(&mut consumer, 2).await;
    let mut bodies: Vec<String> = again.iter().map(body).collect();
    bodies.sort();
    assert_eq!(bodies, vec!["m0".to_string(), "m1".to_string()]);
    assert!(again.iter().all(|d| d.redelivered));
    for d in &again {
        timeout(d.ack(BasicAckOptions::default())).await.unwrap();
    }
    assert_no_delivery(&mut consumer).await;
}

#[tokio::test]
async fn acking_an_unknown_delivery_tag_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "bad-ack", 1).await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    let delivery = next_delivery(&mut consumer).await;
    timeout(ch.basic_ack(delivery.delivery_tag + 1000, BasicAckOptions::default()))
        .await
        .expect("the ack is sent");
    let error = consumer_error(&mut consumer).await;
    assert_eq!(amqp_code(&error), Some(406), "got: {error}");
    // The connection survives a channel error.
    let other = channel(&conn).await;
    assert_eq!(queue_exists(&conn, &name).await.unwrap(), 1);
    drop(other);
}

#[tokio::test]
async fn acking_the_same_delivery_twice_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let name = queue_with(&conn, "double-ack", 1).await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    let delivery = next_delivery(&mut consumer).await;
    timeout(ch.basic_ack(delivery.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    timeout(ch.basic_ack(delivery.delivery_tag, BasicAckOptions::default()))
        .await
        .expect("the second ack is sent");
    let error = consumer_error(&mut consumer).await;
    assert_eq!(amqp_code(&error), Some(406), "got: {error}");
}
