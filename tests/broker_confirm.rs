//! Publisher confirms and mandatory publishing: acks for routed and unroutable messages,
//! basic.return 312 NO_ROUTE for a mandatory unroutable publish (arriving before its ack),
//! and many confirms outstanding at once.

mod support;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{BasicProperties, Channel};
use support::*;

async fn publish_mandatory(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
) -> lapin::Confirmation {
    let confirm = timeout(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        body,
        BasicProperties::default().with_correlation_id("c-1".into()),
    ))
    .await
    .expect("basic.publish");
    timeout(confirm).await.expect("publisher confirm")
}

#[tokio::test]
async fn a_mandatory_unroutable_publish_is_returned_with_312_before_its_ack() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let key = unique("nobody-home");
    let confirmation = publish_mandatory(&ch, "amq.direct", &key, b"undeliverable").await;
    // lapin attaches a basic.return to the confirm only if the return came first.
    assert!(confirmation.is_ack());
    let returned = confirmation
        .take_message()
        .expect("the basic.return arrived before the basic.ack");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(
        returned.error().map(|e| e.kind().clone()),
        Some(AMQPErrorKind::Soft(AMQPSoftError::NOROUTE))
    );
    assert_eq!(returned.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(returned.delivery.routing_key.as_str(), key);
    assert_eq!(returned.delivery.data, b"undeliverable");
    assert_eq!(
        returned
            .delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("c-1")
    );
}

#[tokio::test]
async fn a_mandatory_routable_publish_is_acked_without_a_return() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let name = unique("routable");
    declare_queue_with(
        &ch,
        &name,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let confirmation = publish_mandatory(&ch, "", &name, b"ok").await;
    assert!(confirmation.is_ack());
    assert!(confirmation.take_message().is_none());
    assert_eq!(queue_exists(&conn, &name).await.unwrap(), 1);
}

#[tokio::test]
async fn an_unroutable_non_mandatory_publish_is_dropped_and_still_acked() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let confirm = timeout(ch.basic_publish(
        "amq.direct".into(),
        unique("nobody").as_str().into(),
        BasicPublishOptions::default(),
        b"gone",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    let confirmation = timeout(confirm).await.unwrap();
    assert!(confirmation.is_ack());
    assert!(confirmation.take_message().is_none());
}

#[tokio::test]
async fn a_burst_of_publishes_is_confirmed_in_full() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let name = unique("burst");
    declare_queue_with(
        &ch,
        &name,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let mut confirms = Vec::new();
    for i in 0..500u32 {
        confirms.push(
            timeout(ch.basic_publish(
                "".into(),
                name.as_str().into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            ))
            .await
            .unwrap(),
        );
    }
    let returned = timeout(ch.wait_for_confirms()).await.unwrap();
    assert!(returned.is_empty());
    for confirm in confirms {
        assert!(timeout(confirm).await.unwrap().is_ack());
    }
    assert_eq!(queue_exists(&conn, &name).await.unwrap(), 500);
}

#[tokio::test]
async fn mixed_routable_and_unroutable_mandatory_publishes_return_only_the_unroutable() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let name = unique("mixed");
    declare_queue_with(
        &ch,
        &name,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let missing = unique("missing");
    for i in 0..10 {
        let key = if i % 2 == 0 { &name } else { &missing };
        let confirm = timeout(ch.basic_publish(
            "".into(),
            key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
        // Not awaited: lapin keeps the returns of dropped confirms for wait_for_confirms.
        drop(confirm);
    }
    let returned = timeout(ch.wait_for_confirms()).await.unwrap();
    let mut bodies: Vec<String> = returned
        .iter()
        .map(|r| String::from_utf8_lossy(&r.delivery.data).into_owned())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["1", "3", "5", "7", "9"]);
    assert!(returned.iter().all(|r| r.reply_code == 312));
    assert_eq!(queue_exists(&conn, &name).await.unwrap(), 5);
}
