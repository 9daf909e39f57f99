//! Hostile or unusual input that must neither crash the broker nor be accepted: field
//! tables nested deep enough to overflow a recursive parser, and virtual hosts the broker
//! does not serve.

mod support;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, connection};
use support::raw::{Incoming, RawConnection, encode};
use support::*;

/// A `connection.start-ok` frame whose client properties hold one entry nested `levels`
/// arrays deep, built by hand: no encoder would produce it.
fn start_ok_with_nested_arrays(levels: usize) -> Vec<u8> {
    let mut value = vec![b'V'];
    for _ in 0..levels {
        let mut outer = vec![b'A'];
        outer.extend_from_slice(&(value.len() as u32).to_be_bytes());
        outer.extend_from_slice(&value);
        value = outer;
    }
    let mut table = vec![1, b'x'];
    table.extend_from_slice(&value);
    let mut payload = vec![0, 10, 0, 11];
    payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
    payload.extend_from_slice(&table);
    payload.extend_from_slice(&[5, b'P', b'L', b'A', b'I', b'N']);
    let response = b"\0guest\0guest";
    payload.extend_from_slice(&(response.len() as u32).to_be_bytes());
    payload.extend_from_slice(response);
    payload.extend_from_slice(&[5, b'e', b'n', b'_', b'U', b'S']);
    let mut frame = vec![1, 0, 0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}

#[tokio::test]
async fn deeply_nested_client_properties_are_refused_and_the_broker_keeps_serving() {
    let broker = TestBroker::start().await;
    let mut raw = RawConnection::connect(broker.addr()).await;
    raw.start().await;
    raw.send_bytes(&start_ok_with_nested_arrays(20_000)).await;
    match raw.read().await {
        Incoming::Frame(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(close)),
        )) => {
            assert!(
                close.reply_code >= 500,
                "expected a hard error, got {close:?}"
            );
        }
        Incoming::Closed => {} // RabbitMQ may simply drop the socket
        other => panic!("expected connection.close, got {other:?}"),
    }
    // The broker is still there for everyone else.
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, &unique("after-nesting")).await;
}

#[tokio::test]
async fn opening_a_vhost_the_broker_does_not_serve_is_refused() {
    let broker = TestBroker::start().await;
    let mut raw = RawConnection::connect(broker.addr()).await;
    raw.start().await;
    let (user, password) = broker.credentials();
    let tune = raw.login(user, password).await;
    raw.tune_ok(tune.channel_max, tune.frame_max, 0).await;
    let open = AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: unique("no-such-vhost").as_str().into(),
        })),
    );
    raw.send_bytes(&encode(&open)).await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(code, 530, "{text}");
}

#[tokio::test]
async fn an_error_about_a_long_name_is_reported_and_the_connection_keeps_working() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    // A 250-byte name makes the 404 text longer than a short string can carry.
    let name = format!("{}-{}", unique("long"), "x".repeat(250));
    let name = &name[..250];
    let missing = timeout(ch.queue_declare(
        name.into(),
        lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    ))
    .await;
    assert_amqp_error(missing, 404);
    let again = channel(&conn).await;
    declare_queue(&again, &unique("after-long-name")).await;
}
