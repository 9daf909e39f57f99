//! Publisher confirms and mandatory publishing: acks for routed and unroutable messages,
//! basic.return 312 NO_ROUTE for a mandatory unroutable publish (arriving before its ack),
//! many confirms outstanding at once, and confirms coalesced into `multiple` acks that
//! still settle every sequence number exactly once, never before it completed.

mod support;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, basic};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use std::collections::BTreeMap;
use support::raw::{RawConnection, encode};
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

/// How the broker settled one publish, as a client applying `multiple` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Ack,
    Nack,
}

/// One publish of `body` to `queue` through the default exchange on channel 1, encoded.
fn publish_frames(queue: &str, body: &[u8], persistent: bool) -> Vec<u8> {
    let mut bytes = encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: queue.into(),
            mandatory: false,
            immediate: false,
        })),
    ));
    let properties = if persistent {
        basic::AMQPProperties::default().with_delivery_mode(2)
    } else {
        basic::AMQPProperties::default()
    };
    bytes.extend(encode(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties,
        },
    )));
    bytes.extend(encode(&AMQPFrame::Body(1, body.to_vec())));
    bytes
}

#[tokio::test]
async fn coalesced_confirms_settle_every_sequence_number_exactly_once() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    // Persistent messages here are confirmed once on disk, later than transient ones.
    let durable = unique("confirm-durable");
    declare_queue_with(
        &ch,
        &durable,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )
    .await;
    let transient = unique("confirm-transient");
    declare_queue_with(
        &ch,
        &transient,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await;
    // Refuses everything: its publishes are nacked.
    let full = unique("confirm-full");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    timeout(ch.queue_declare(
        full.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        args,
    ))
    .await
    .expect("declare the full queue");

    let (mut raw, _) =
        RawConnection::handshake(broker.addr(), broker.credentials(), 131_072, 0).await;
    raw.open_channel(1).await;
    raw.select_confirms(1).await;

    // One write, so the broker handles many publishes per read: acks to coalesce, with
    // persistent ones completing after the transient ones behind them and nacks between.
    const PUBLISHES: u64 = 600;
    let mut expected = BTreeMap::new();
    let mut bytes = Vec::new();
    for tag in 1..=PUBLISHES {
        let (queue, persistent, settled) = match tag {
            t if t % 17 == 0 => (&full, false, Settled::Nack),
            t if t % 3 == 0 => (&durable, true, Settled::Ack),
            _ => (&transient, false, Settled::Ack),
        };
        bytes.extend(publish_frames(queue, &tag.to_be_bytes(), persistent));
        expected.insert(tag, settled);
    }
    raw.send_bytes(&bytes).await;

    let mut outstanding: BTreeMap<u64, Settled> = expected.clone();
    let mut settled = BTreeMap::new();
    let (mut frames, mut multiples) = (0, 0);
    while !outstanding.is_empty() {
        let (tag, multiple, how) = match raw.read_method().await {
            (1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
                (a.delivery_tag, a.multiple, Settled::Ack)
            }
            (1, AMQPClass::Basic(basic::AMQPMethod::Nack(n))) => {
                (n.delivery_tag, n.multiple, Settled::Nack)
            }
            other => panic!("expected a publisher confirm, got {other:?}"),
        };
        frames += 1;
        assert!(
            outstanding.contains_key(&tag),
            "tag {tag} confirmed again, or never published (multiple = {multiple})"
        );
        let covered: Vec<u64> = if multiple {
            multiples += 1;
            outstanding.range(..=tag).map(|(t, _)| *t).collect()
        } else {
            vec![tag]
        };
        for t in covered {
            outstanding.remove(&t);
            settled.insert(t, how);
        }
    }
    assert_eq!(
        settled, expected,
        "each publish acked or nacked as its queue decided"
    );
    assert!(
        multiples > 0 && frames < PUBLISHES,
        "{frames} confirm frames for {PUBLISHES} publishes, {multiples} with multiple = true"
    );
    // Nothing more on the channel before the reply to a later request: no confirm is
    // sent twice.
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: false,
        })),
    )
    .await;
    assert!(matches!(
        raw.read_method().await,
        (1, AMQPClass::Basic(basic::AMQPMethod::QosOk(_)))
    ));
    assert_eq!(queue_exists(&conn, &durable).await.unwrap(), 200 - 11);
}
