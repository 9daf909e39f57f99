//! Routing: the default exchange, direct, fanout, topic (`*` and `#`) and headers
//! (x-match all / any) exchanges, queue.bind / queue.unbind, and sender-selected
//! distribution with the `CC` and `BCC` headers.
//!
//! Each test publishes with confirms (so every message has been routed before the test
//! looks) and then reads every queue with basic.get, asserting exactly which messages each
//! queue holds.

mod support;

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use support::*;

/// Declares `n` exclusive queues with unique names.
async fn queues(ch: &Channel, label: &str, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = unique(&format!("{label}{i}"));
        declare_queue_with(
            ch,
            &name,
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .await;
        names.push(name);
    }
    names
}

/// Drains `queue` with basic.get (auto-ack) and returns the bodies in order.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(message) = timeout(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("basic.get")
    {
        bodies.push(body(&message.delivery));
    }
    bodies
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn the_default_exchange_routes_by_queue_name() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = queues(&ch, "default", 2).await;
    publish(&ch, "", &q[0], b"to-0").await;
    publish(&ch, "", &q[1], b"to-1").await;
    publish(&ch, "", &unique("nobody"), b"dropped").await;
    assert_eq!(drain(&ch, &q[0]).await, strings(&["to-0"]));
    assert_eq!(drain(&ch, &q[1]).await, strings(&["to-1"]));
}

#[tokio::test]
async fn a_direct_exchange_routes_on_exact_keys_to_every_matching_binding() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x = unique("direct");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let q = queues(&ch, "direct", 3).await;
    bind(&ch, &q[0], &x, "red").await;
    bind(&ch, &q[1], &x, "red").await;
    bind(&ch, &q[1], &x, "green").await;
    bind(&ch, &q[2], &x, "blue").await;
    for key in ["red", "green", "blue", "redd", ""] {
        publish(&ch, &x, key, key.as_bytes()).await;
    }
    assert_eq!(drain(&ch, &q[0]).await, strings(&["red"]));
    assert_eq!(drain(&ch, &q[1]).await, strings(&["red", "green"]));
    assert_eq!(drain(&ch, &q[2]).await, strings(&["blue"]));
}

#[tokio::test]
async fn amq_direct_routes_like_any_direct_exchange() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = queues(&ch, "amqdirect", 1).await;
    let key = unique("key");
    bind(&ch, &q[0], "amq.direct", &key).await;
    publish(&ch, "amq.direct", &key, b"hit").await;
    publish(&ch, "amq.direct", &unique("other"), b"miss").await;
    assert_eq!(drain(&ch, &q[0]).await, strings(&["hit"]));
}

#[tokio::test]
async fn a_fanout_exchange_copies_every_message_to_every_bound_queue() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x = unique("fanout");
    declare_exchange(&ch, &x, ExchangeKind::Fanout).await;
    let q = queues(&ch, "fanout", 3).await;
    for (i, name) in q.iter().enumerate() {
        bind(&ch, name, &x, &format!("ignored-{i}")).await;
    }
    publish(&ch, &x, "any", b"one").await;
    publish(&ch, &x, "", b"two").await;
    for name in &q {
        assert_eq!(drain(&ch, name).await, strings(&["one", "two"]));
    }
}

#[tokio::test]
async fn a_topic_exchange_matches_star_as_one_word_and_hash_as_zero_or_more() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x = unique("topic");
    declare_exchange(&ch, &x, ExchangeKind::Topic).await;
    let q = queues(&ch, "topic", 6).await;
    bind(&ch, &q[0], &x, "web.*").await;
    bind(&ch, &q[1], &x, "web.#").await;
    bind(&ch, &q[2], &x, "*.eu.*").await;
    bind(&ch, &q[3], &x, "#").await;
    bind(&ch, &q[4], &x, "db.#.primary").await;
    bind(&ch, &q[5], &x, "web.01").await;
    for key in [
        "web",
        "web.01",
        "web.eu.2",
        "db.eu.1",
        "db.primary",
        "db.eu.x.primary",
        "webx.01",
    ] {
        publish(&ch, &x, key, key.as_bytes()).await;
    }
    assert_eq!(drain(&ch, &q[0]).await, strings(&["web.01"]));
    assert_eq!(
        drain(&ch, &q[1]).await,
        strings(&["web", "web.01", "web.eu.2"])
    );
    assert_eq!(drain(&ch, &q[2]).await, strings(&["web.eu.2", "db.eu.1"]));
    assert_eq!(
        drain(&ch, &q[3]).await,
        strings(&[
            "web",
            "web.01",
            "web.eu.2",
            "db.eu.1",
            "db.primary",
            "db.eu.x.primary",
            "webx.01"
        ])
    );
    assert_eq!(
        drain(&ch, &q[4]).await,
        strings(&["db.primary", "db.eu.x.primary"])
    );
    assert_eq!(drain(&ch, &q[5]).await, strings(&["web.01"]));
}

#[tokio::test]
async fn amq_topic_is_a_topic_exchange() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = queues(&ch, "amqtopic", 1).await;
    let root = unique("root").replace('.', "_");
    bind(&ch, &q[0], "amq.topic", &format!("{root}.*")).await;
    publish(&ch, "amq.topic", &format!("{root}.a"), b"hit").await;
    publish(&ch, "amq.topic", &format!("{root}.a.b"), b"miss").await;
    assert_eq!(drain(&ch, &q[0]).await, strings(&["hit"]));
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[tokio::test]
async fn a_headers_exchange_matches_x_match_all_and_any() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x = unique("headers");
    declare_exchange(&ch, &x, ExchangeKind::Headers).await;
    let q = queues(&ch, "headers", 2).await;
    bind_with(
        &ch,
        &q[0],
        &x,
        "",
        table(&[
            ("x-match", text("all")),
            ("os", text("linux")),
            ("arch", text("arm64")),
        ]),
    )
    .await;
    bind_with(
        &ch,
        &q[1],
        &x,
        "",
        table(&[
            ("x-match", text("any")),
            ("os", text("linux")),
            ("arch", text("arm64")),
        ]),
    )
    .await;
    let cases: [(&str, Vec<(&str, AMQPValue)>); 4] = [
        ("both", vec![("os", text("linux")), ("arch", text("arm64"))]),
        ("os-only", vec![("os", text("linux"))]),
        (
            "wrong-arch",
            vec![("os", text("bsd")), ("arch", text("amd64"))],
        ),
        ("none", vec![]),
    ];
    for (name, headers) in cases {
        publish_with(
            &ch,
            &x,
            "ignored",
            name.as_bytes(),
            BasicProperties::default().with_headers(table(&headers)),
        )
        .await;
    }
    assert_eq!(drain(&ch, &q[0]).await, strings(&["both"]));
    assert_eq!(drain(&ch, &q[1]).await, strings(&["both", "os-only"]));
}

#[tokio::test]
async fn unbinding_stops_routing_to_the_queue() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x = unique("unbind");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let q = queues(&ch, "unbind", 1).await;
    bind(&ch, &q[0], &x, "k").await;
    publish(&ch, &x, "k", b"before").await;
    timeout(ch.queue_unbind(
        q[0].as_str().into(),
        x.as_str().into(),
        "k".into(),
        FieldTable::default(),
    ))
    .await
    .expect("queue.unbind");
    publish(&ch, &x, "k", b"after").await;
    assert_eq!(drain(&ch, &q[0]).await, strings(&["before"]));
}

#[tokio::test]
async fn binding_to_a_missing_exchange_or_queue_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let q = queues(&ch, "bind404", 1).await;
    assert_amqp_error(
        timeout(ch.queue_bind(
            q[0].as_str().into(),
            unique("no-such-x").as_str().into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        404,
    );
    let ch = channel(&conn).await;
    assert_amqp_error(
        timeout(ch.queue_bind(
            unique("no-such-q").as_str().into(),
            "amq.direct".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        404,
    );
}

fn array(keys: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        keys.iter().map(|k| text(k)).collect::<Vec<_>>(),
    ))
}

#[tokio::test]
async fn cc_and_bcc_headers_add_routing_keys_and_bcc_is_stripped_on_delivery() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x = unique("cc");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let q = queues(&ch, "cc", 4).await;
    bind(&ch, &q[0], &x, "main").await;
    bind(&ch, &q[1], &x, "copy").await;
    bind(&ch, &q[2], &x, "blind").await;
    bind(&ch, &q[3], &x, "elsewhere").await;
    let headers = table(&[
        ("CC", array(&["copy"])),
        ("BCC", array(&["blind"])),
        ("kept", text("yes")),
    ]);
    publish_with(
        &ch,
        &x,
        "main",
        b"hello",
        BasicProperties::default().with_headers(headers),
    )
    .await;

    for name in &q[..3] {
        let message = timeout(ch.basic_get(name.as_str().into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name} should have received the message"));
        let delivery = &message.delivery;
        assert_eq!(body(delivery), "hello");
        assert_eq!(delivery.routing_key.as_str(), "main");
        let headers = delivery
            .properties
            .headers()
            .as_ref()
            .expect("headers are delivered");
        let headers = headers.inner();
        assert!(
            !headers.contains_key("BCC"),
            "BCC must be stripped: {headers:?}"
        );
        assert_eq!(headers.get("CC"), Some(&array(&["copy"])), "CC is kept");
        assert_eq!(headers.get("kept"), Some(&text("yes")));
    }
    assert!(drain(&ch, &q[3]).await.is_empty());
}

#[tokio::test]
async fn cc_routes_through_a_topic_exchange_and_a_queue_matched_twice_gets_one_copy() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let x = unique("cc-topic");
    declare_exchange(&ch, &x, ExchangeKind::Topic).await;
    let q = queues(&ch, "cctopic", 3).await;
    bind(&ch, &q[0], &x, "minion.a").await;
    bind(&ch, &q[1], &x, "minion.b").await;
    bind(&ch, &q[2], &x, "minion.*").await;
    publish_with(
        &ch,
        &x,
        "minion.a",
        b"job",
        BasicProperties::default()
            .with_headers(table(&[("BCC", array(&["minion.b", "minion.a"]))])),
    )
    .await;
    assert_eq!(drain(&ch, &q[0]).await, strings(&["job"]));
    assert_eq!(drain(&ch, &q[1]).await, strings(&["job"]));
    assert_eq!(drain(&ch, &q[2]).await, strings(&["job"]));
}
