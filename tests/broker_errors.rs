//! Errors by the spec: channel errors close only their channel, connection errors (504,
//! 505) close the connection with a reason, and the maximum message size is enforced.

mod support;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, basic, channel, queue};
use amq_protocol::types::FieldTable as RawFieldTable;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use support::raw::RawConnection;
use support::*;

#[tokio::test]
async fn a_channel_error_closes_only_that_channel() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let good = channel(&conn).await;
    let bad = channel(&conn).await;
    assert_amqp_error(
        timeout(bad.queue_declare(
            unique("missing").as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        ))
        .await,
        404,
    );
    assert!(!bad.status().connected(), "the failed channel is closed");
    assert!(conn.status().connected());
    let name = unique("survivor");
    declare_queue_with(
        &good,
        &name,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    let reopened = channel(&conn).await;
    assert!(reopened.status().connected());
}

#[tokio::test]
async fn a_channel_error_carries_a_reason_a_person_can_act_on() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let missing = unique("explain-me");
    let error = queue_exists(&conn, &missing)
        .await
        .expect_err("passive declare of a missing queue fails");
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => {
            assert_eq!(e.get_id(), 404);
            assert!(
                e.get_message().as_str().contains(&missing),
                "the reason names the queue: {}",
                e.get_message()
            );
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_method_on_a_channel_that_was_never_opened_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let (mut conn, _) =
        RawConnection::handshake(broker.addr(), broker.credentials(), 131072, 0).await;
    conn.send_method(
        7,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "".into(),
            passive: false,
            durable: false,
            exclusive: true,
            auto_delete: false,
            nowait: false,
            arguments: RawFieldTable::default(),
        })),
    )
    .await;
    let (code, text) = conn.expect_connection_close().await;
    assert_eq!(code, 504, "{text}");
    assert!(!text.is_empty());
}

#[tokio::test]
async fn opening_an_open_channel_again_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let (mut conn, _) =
        RawConnection::handshake(broker.addr(), broker.credentials(), 131072, 0).await;
    conn.open_channel(1).await;
    conn.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    let (code, text) = conn.expect_connection_close().await;
    assert_eq!(code, 504, "{text}");
}

#[tokio::test]
async fn a_content_body_without_a_publish_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let (mut conn, _) =
        RawConnection::handshake(broker.addr(), broker.credentials(), 131072, 0).await;
    conn.open_channel(1).await;
    conn.send_frame(&AMQPFrame::Body(1, b"orphan".to_vec()))
        .await;
    let (code, text) = conn.expect_connection_close().await;
    assert_eq!(code, 505, "{text}");
}

#[tokio::test]
async fn a_method_in_the_middle_of_a_content_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let (mut conn, _) =
        RawConnection::handshake(broker.addr(), broker.credentials(), 131072, 0).await;
    conn.open_channel(1).await;
    conn.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "nowhere".into(),
            mandatory: false,
            immediate: false,
        })),
    )
    .await;
    conn.send_frame(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 10,
            properties: basic::AMQPProperties::default(),
        },
    ))
    .await;
    // Body still owed: another method instead is an unexpected frame.
    conn.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    )
    .await;
    let (code, text) = conn.expect_connection_close().await;
    assert_eq!(code, 505, "{text}");
}

#[tokio::test]
async fn a_message_above_the_maximum_size_is_refused_and_not_queued() {
    let Some(broker) = TestBroker::start_process(
        "a_message_above_the_maximum_size_is_refused_and_not_queued",
        &["--max-message-size", "4096"],
    )
    .await
    else {
        return;
    };
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let name = unique("max-size");
    declare_queue(&ch, &name).await;
    publish(&ch, "", &name, &[7u8; 4096]).await;

    let confirm = timeout(ch.basic_publish(
        "".into(),
        name.as_str().into(),
        BasicPublishOptions::default(),
        &[7u8; 4097],
        BasicProperties::default(),
    ))
    .await
    .expect("the publish is sent");
    // RabbitMQ closes the channel with 406 PRECONDITION_FAILED ("message size … is larger
    // than configured max size …"); the embedded broker does the same.
    assert_amqp_error(timeout(confirm).await, 406);
    assert_eq!(queue_exists(&conn, &name).await.unwrap(), 1);
}
