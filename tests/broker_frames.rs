//! The wire itself, driven frame by frame over a plain TCP stream: the protocol header
//! check, the server properties and capabilities, tuning limits, heartbeats and dead-peer
//! detection, frame errors (501) and confirm sequence numbers counted from confirm.select.

mod support;

use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, channel, connection, queue};
use amq_protocol::types::{AMQPValue, FieldTable};
use support::raw::{Incoming, PROTOCOL_HEADER, RawConnection, encode};
use support::*;

#[tokio::test]
async fn a_non_amqp_greeting_is_answered_with_the_0_9_1_header_then_closed() {
    let broker = TestBroker::start().await;
    let mut conn = RawConnection::connect(broker.addr()).await;
    conn.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let answer = conn.read_to_end().await;
    assert_eq!(answer.as_slice(), PROTOCOL_HEADER);
}

#[tokio::test]
async fn an_amqp_0_10_header_is_answered_with_the_0_9_1_header_then_closed() {
    let broker = TestBroker::start().await;
    let mut conn = RawConnection::connect(broker.addr()).await;
    conn.send_bytes(b"AMQP\x01\x01\x00\x0a").await;
    let answer = conn.read_to_end().await;
    assert_eq!(answer.as_slice(), PROTOCOL_HEADER);
}

fn capability(start: &connection::Start, name: &str) -> Option<bool> {
    match start.server_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => match caps.inner().get(name) {
            Some(AMQPValue::Boolean(b)) => Some(*b),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test]
async fn connection_start_announces_0_9_1_plain_and_the_capabilities_clients_need() {
    let broker = TestBroker::start().await;
    let mut conn = RawConnection::connect(broker.addr()).await;
    let start = conn.start().await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let mechanisms = start.mechanisms.to_string();
    assert!(
        mechanisms.split(' ').any(|m| m == "PLAIN"),
        "mechanisms: {mechanisms}"
    );
    for cap in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "per_consumer_qos",
        "authentication_failure_close",
        "connection.blocked",
    ] {
        assert_eq!(capability(&start, cap), Some(true), "capability {cap}");
    }
}

#[tokio::test]
async fn tune_proposes_a_frame_max_of_at_least_8192() {
    let broker = TestBroker::start().await;
    let mut conn = RawConnection::connect(broker.addr()).await;
    conn.start().await;
    let (user, password) = broker.credentials();
    let tune = conn.login(user, password).await;
    assert!(tune.frame_max >= 8192, "{tune:?}");
}

#[tokio::test]
async fn a_failed_plain_login_gets_connection_close_403_with_a_reason() {
    let broker = TestBroker::start().await;
    let mut conn = RawConnection::connect(broker.addr()).await;
    conn.start().await;
    conn.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: support::raw::client_properties(),
            mechanism: "PLAIN".into(),
            response: "\0guest\0wrong-password".into(),
            locale: "en_US".into(),
        })),
    )
    .await;
    let (code, text) = conn.expect_connection_close().await;
    assert_eq!(code, 403, "{text}");
    assert!(!text.is_empty());
}

#[tokio::test]
async fn a_frame_larger_than_frame_max_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let (mut conn, _) =
        RawConnection::handshake(broker.addr(), broker.credentials(), 8192, 0).await;
    // A method frame header announcing 1 MiB on channel 1, followed by only a few bytes:
    // the broker must refuse it from the size alone, without waiting for the payload.
    let mut frame = vec![1u8, 0, 1];
    frame.extend_from_slice(&(1u32 << 20).to_be_bytes());
    frame.extend_from_slice(&[0u8; 64]);
    conn.send_bytes(&frame).await;
    let (code, text) = conn.expect_connection_close().await;
    assert_eq!(code, 501, "{text}");
}

#[tokio::test]
async fn a_frame_with_a_bad_end_octet_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let (mut conn, _) =
        RawConnection::handshake(broker.addr(), broker.credentials(), 8192, 0).await;
    let mut frame = encode(&AMQPFrame::Method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ));
    *frame.last_mut().unwrap() = 0x00;
    conn.send_bytes(&frame).await;
    let (code, text) = conn.expect_connection_close().await;
    assert_eq!(code, 501, "{text}");
}

#[tokio::test]
async fn a_tune_ok_frame_max_above_the_proposal_ends_the_connection() {
    let broker = TestBroker::start().await;
    let mut conn = RawConnection::connect(broker.addr()).await;
    conn.start().await;
    let (user, password) = broker.credentials();
    let tune = conn.login(user, password).await;
    conn.tune_ok(tune.channel_max, tune.frame_max.saturating_add(1), 0)
        .await;
    conn.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    )
    .await;
    // The spec says close the socket; a broker may send connection.close first. Either way
    // the connection must not open.
    loop {
        match conn.read().await {
            Incoming::Closed => break,
            Incoming::Frame(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)),
            )) => panic!("the broker opened a connection with an oversized frame_max"),
            Incoming::Frame(_) => continue,
        }
    }
}

#[tokio::test]
async fn the_broker_sends_heartbeats_and_drops_a_silent_peer() {
    let broker = TestBroker::start().await;
    let (mut conn, _) =
        RawConnection::handshake(broker.addr(), broker.credentials(), 8192, 1).await;
    // With a 1 s heartbeat the broker sends heartbeats on channel 0...
    let mut heartbeats = 0;
    let closed = loop {
        match conn.read().await {
            Incoming::Frame(AMQPFrame::Heartbeat) => heartbeats += 1,
            Incoming::Frame(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(c)),
            )) => break Some(c.reply_code),
            Incoming::Frame(other) => panic!("unexpected frame {other:?}"),
            Incoming::Closed => break None,
        }
    };
    assert!(heartbeats >= 1, "no heartbeat before the connection ended");
    // ...and, since this client never sends any, declares it dead (a bare close or a
    // connection.close are both acceptable).
    if let Some(code) = closed {
        assert!(code >= 300, "closed with {code}");
    }
}

#[tokio::test]
async fn a_client_that_sends_heartbeats_stays_connected() {
    let broker = TestBroker::start().await;
    let (mut conn, _) =
        RawConnection::handshake(broker.addr(), broker.credentials(), 8192, 1).await;
    let heartbeat = encode(&AMQPFrame::Heartbeat);
    // Answer every heartbeat for about four intervals: more than the two silent ones
    // after which a peer counts as dead.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        conn.send_bytes(&heartbeat).await;
        match conn.read_within(Duration::from_millis(500)).await {
            None | Some(Incoming::Frame(AMQPFrame::Heartbeat)) => {}
            Some(other) => panic!("a heartbeating client was dropped: {other:?}"),
        }
    }
}

#[tokio::test]
async fn confirm_sequence_numbers_count_from_confirm_select() {
    let broker = TestBroker::start().await;
    let (mut conn, _) =
        RawConnection::handshake(broker.addr(), broker.credentials(), 131072, 0).await;
    conn.open_channel(1).await;
    let name = unique("raw-confirm");
    conn.send_method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.as_str().into(),
            passive: false,
            durable: false,
            exclusive: true,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await;
    assert!(matches!(
        conn.read_method().await,
        (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))
    ));

    // Two publishes before confirm.select do not count...
    conn.publish(1, &name, b"hi", basic::AMQPProperties::default())
        .await;
    conn.publish(1, &name, b"hi", basic::AMQPProperties::default())
        .await;
    conn.select_confirms(1).await;
    // ...so the first publish after it is confirmed as delivery tag 1.
    conn.publish(1, &name, b"hi", basic::AMQPProperties::default())
        .await;
    match conn.read_method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => {
            assert_eq!(ack.delivery_tag, 1);
        }
        other => panic!("expected basic.ack, got {other:?}"),
    }
    conn.publish(1, &name, b"hi", basic::AMQPProperties::default())
        .await;
    match conn.read_method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => {
            assert_eq!(ack.delivery_tag, 2);
        }
        other => panic!("expected basic.ack, got {other:?}"),
    }
}
