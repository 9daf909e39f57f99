//! Message TTL, queue expiry, length limits and dead-lettering, checked the way a client
//! sees them. Written to give the same results against RabbitMQ 3.10
//! (`DISPATCH_TEST_BROKER_URL`) and against dispatch-broker.
//!
//! No test sleeps to order events. Where a test needs "at least N ms have passed on the
//! broker", it asks the broker itself: [`broker_time_passes`] publishes a probe with a
//! TTL into a queue that dead-letters it to an observer queue and waits for the probe to
//! arrive there.

mod support;

use lapin::Confirmation;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use support::*;

// ---- helpers ----

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn int(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

async fn declare_with(ch: &Channel, name: &str, arguments: FieldTable) {
    timeout(ch.queue_declare(name.into(), QueueDeclareOptions::default(), arguments))
        .await
        .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
}

/// Message count of `name`, by passive declare on a throw-away channel.
async fn count(conn: &Connection, name: &str) -> u32 {
    queue_exists(conn, name)
        .await
        .unwrap_or_else(|e| panic!("queue {name} should exist: {e}"))
}

fn expiring(ms: &str) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.into())
}

/// Publishes without waiting for a confirm; returns the confirmation future's result.
async fn publish_confirmation(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    mandatory: bool,
) -> Confirmation {
    let confirm = timeout(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        },
        body,
        BasicProperties::default(),
    ))
    .await
    .expect("basic.publish");
    timeout(confirm).await.expect("publisher confirm")
}

/// `basic.get` with auto-ack; the body, or `None` for get-empty.
async fn get(ch: &Channel, queue: &str) -> Option<String> {
    timeout(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("basic.get")
        .map(|m| body(&m.delivery))
}

/// Returns once at least `ms` milliseconds have passed on the broker's clock since the
/// call: a probe with that TTL dies in one queue and is dead-lettered to an observer.
async fn broker_time_passes(ch: &Channel, ms: u32) {
    let observer = unique("clock-observer");
    let probe = unique("clock-probe");
    declare_queue(ch, &observer).await;
    declare_with(
        ch,
        &probe,
        args(&[
            ("x-message-ttl", int(i64::from(ms))),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&observer)),
        ]),
    )
    .await;
    let mut seen = consume(
        ch,
        &observer,
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    publish(ch, "", &probe, b"tick").await;
    next_delivery(&mut seen).await;
}

/// The `x-death` entries of a delivery, most recent first.
fn deaths(properties: &BasicProperties) -> Vec<FieldTable> {
    let headers = properties
        .headers()
        .clone()
        .expect("a dead letter has headers");
    match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("x-death is not an array: {other:?} in {headers:?}"),
    }
}

fn header_str(table: &FieldTable, key: &str) -> String {
    match table.inner().get(key) {
        Some(AMQPValue::LongString(v)) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(v)) => v.as_str().to_owned(),
        other => panic!("{key} is not a string: {other:?} in {table:?}"),
    }
}

fn header_int(table: &FieldTable, key: &str) -> i64 {
    match table.inner().get(key) {
        Some(AMQPValue::LongLongInt(v)) => *v,
        Some(AMQPValue::LongInt(v)) => i64::from(*v),
        other => panic!("{key} is not an integer: {other:?} in {table:?}"),
    }
}

fn header_strs(table: &FieldTable, key: &str) -> Vec<String> {
    match table.inner().get(key) {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::LongString(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
                other => panic!("{key} holds {other:?}"),
            })
            .collect(),
        other => panic!("{key} is not an array: {other:?} in {table:?}"),
    }
}

/// A dead-letter queue bound to a fresh direct exchange with `key`; returns
/// (exchange, queue).
async fn dead_letter_target(ch: &Channel, key: &str) -> (String, String) {
    let dlx = unique("dlx");
    let dlq = unique("dlq");
    declare_exchange(ch, &dlx, ExchangeKind::Direct).await;
    declare_queue(ch, &dlq).await;
    bind(ch, &dlq, &dlx, key).await;
    (dlx, dlq)
}

fn auto_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    }
}

/// The 406 text of declaring `name` with `arguments`, on a throw-away channel.
async fn declare_refusal(conn: &Connection, name: &str, arguments: FieldTable) -> String {
    let ch = channel(conn).await;
    let result =
        timeout(ch.queue_declare(name.into(), QueueDeclareOptions::default(), arguments)).await;
    match result {
        Ok(q) => panic!("declare of {name} should fail, got {q:?}"),
        Err(e) => {
            assert_eq!(amqp_code(&e), Some(406), "expected 406, got {e}");
            match e.kind() {
                lapin::ErrorKind::ProtocolError(p) => p.get_message().to_string(),
                _ => unreachable!(),
            }
        }
    }
}

// ---- TTL ----

#[tokio::test]
async fn a_message_past_its_queue_ttl_disappears_without_any_consumer() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("ttl");
    declare_with(&ch, &q, args(&[("x-message-ttl", int(50))])).await;
    publish(&ch, "", &q, b"short-lived").await;
    eventually("the message expired", || async {
        count(&conn, &q).await == 0
    })
    .await;
    assert_eq!(get(&ch, &q).await, None);
}

#[tokio::test]
async fn the_smaller_of_message_expiration_and_queue_ttl_applies() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let long_queue = unique("ttl-long-queue");
    let short_queue = unique("ttl-short-queue");
    declare_with(&ch, &long_queue, args(&[("x-message-ttl", int(600_000))])).await;
    declare_with(&ch, &short_queue, args(&[("x-message-ttl", int(50))])).await;
    publish_with(&ch, "", &long_queue, b"m", expiring("50")).await;
    publish_with(&ch, "", &short_queue, b"m", expiring("600000")).await;
    eventually("both messages expired", || async {
        count(&conn, &long_queue).await == 0 && count(&conn, &short_queue).await == 0
    })
    .await;
}

#[tokio::test]
async fn ttl_zero_reaches_a_waiting_consumer_and_is_dropped_when_none_waits() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let watched = unique("ttl0-watched");
    let unwatched = unique("ttl0-unwatched");
    declare_with(&ch, &watched, args(&[("x-message-ttl", int(0))])).await;
    declare_with(&ch, &unwatched, args(&[("x-message-ttl", int(0))])).await;
    let mut consumer = consume(&ch, &watched, auto_ack()).await;
    publish(&ch, "", &watched, b"now or never").await;
    assert_eq!(body(&next_delivery(&mut consumer).await), "now or never");
    publish(&ch, "", &unwatched, b"nobody").await;
    assert_eq!(get(&ch, &unwatched).await, None);
    // Per-message expiration "0" on a queue without TTL behaves the same.
    let plain = unique("expiration0");
    declare_queue(&ch, &plain).await;
    publish_with(&ch, "", &plain, b"nobody", expiring("0")).await;
    assert_eq!(get(&ch, &plain).await, None);
}

#[tokio::test]
async fn messages_expire_only_at_the_head_of_the_queue() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("head-only");
    declare_queue(&ch, &q).await;
    publish_with(&ch, "", &q, b"long", expiring("600000")).await;
    publish_with(&ch, "", &q, b"short", expiring("20")).await;
    broker_time_passes(&ch, 100).await;
    // "short" is past its TTL but held back behind "long".
    assert_eq!(count(&conn, &q).await, 2);
    assert_eq!(get(&ch, &q).await.as_deref(), Some("long"));
    // Now at the head, it is checked before delivery and found expired.
    assert_eq!(get(&ch, &q).await, None);
    assert_eq!(count(&conn, &q).await, 0);
}

#[tokio::test]
async fn a_requeued_message_keeps_its_original_expiry() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("requeue-ttl");
    declare_with(&ch, &q, args(&[("x-message-ttl", int(50))])).await;
    publish(&ch, "", &q, b"m").await;
    let got = timeout(ch.basic_get(q.as_str().into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .expect("the message is there before its TTL");
    broker_time_passes(&ch, 100).await;
    timeout(got.delivery.nack(BasicNackOptions {
        multiple: false,
        requeue: true,
    }))
    .await
    .unwrap();
    eventually("the requeued message expired", || async {
        count(&conn, &q).await == 0
    })
    .await;
}

// ---- x-expires ----

/// Whether queue `name` is gone, asked without using it: a mandatory publish comes back.
async fn queue_is_gone(ch: &Channel, name: &str) -> bool {
    let confirmation = publish_confirmation(ch, "", name, b"ping", true).await;
    assert!(confirmation.is_ack(), "{confirmation:?}");
    confirmation.take_message().is_some()
}

#[tokio::test]
async fn an_unused_queue_is_deleted_after_x_expires_but_not_while_consumed() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let consumed = unique("expires-consumed");
    let idle = unique("expires-idle");
    declare_with(&ch, &consumed, args(&[("x-expires", int(100))])).await;
    let consumer_ch = channel(&conn).await;
    let consumer = consume(&consumer_ch, &consumed, auto_ack()).await;
    declare_with(&ch, &idle, args(&[("x-expires", int(100))])).await;
    eventually("the idle queue expired", || async {
        queue_is_gone(&ch, &idle).await
    })
    .await;
    assert!(
        !queue_is_gone(&ch, &consumed).await,
        "a queue with a consumer must not expire"
    );
    timeout(consumer_ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    eventually("the queue expired after its consumer left", || async {
        queue_is_gone(&ch, &consumed).await
    })
    .await;
}

// ---- length limits ----

#[tokio::test]
async fn max_length_drops_the_oldest_messages_by_default() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("maxlen");
    declare_with(&ch, &q, args(&[("x-max-length", int(2))])).await;
    for m in ["1", "2", "3"] {
        publish(&ch, "", &q, m.as_bytes()).await;
    }
    assert_eq!(count(&conn, &q).await, 2);
    assert_eq!(get(&ch, &q).await.as_deref(), Some("2"));
    assert_eq!(get(&ch, &q).await.as_deref(), Some("3"));
}

#[tokio::test]
async fn max_length_bytes_counts_body_bytes_of_ready_messages() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("maxbytes");
    declare_with(&ch, &q, args(&[("x-max-length-bytes", int(10))])).await;
    for m in ["aaaaa", "bbbbb", "ccccc"] {
        publish(&ch, "", &q, m.as_bytes()).await;
    }
    assert_eq!(count(&conn, &q).await, 2);
    assert_eq!(get(&ch, &q).await.as_deref(), Some("bbbbb"));
    assert_eq!(get(&ch, &q).await.as_deref(), Some("ccccc"));
}

#[tokio::test]
async fn reject_publish_nacks_what_does_not_fit_even_when_mandatory() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("reject-publish");
    declare_with(
        &ch,
        &q,
        args(&[
            ("x-max-length", int(1)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    assert!(
        publish_confirmation(&ch, "", &q, b"fits", false)
            .await
            .is_ack()
    );
    let refused = publish_confirmation(&ch, "", &q, b"full", true).await;
    assert!(refused.is_nack(), "{refused:?}");
    assert!(
        refused.take_message().is_none(),
        "a refused message is not returned"
    );
    assert_eq!(get(&ch, &q).await.as_deref(), Some("fits"));
    // Room again.
    assert!(
        publish_confirmation(&ch, "", &q, b"next", false)
            .await
            .is_ack()
    );
}

#[tokio::test]
async fn reject_publish_without_confirms_drops_silently_and_keeps_the_channel() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let q = unique("reject-silent");
    declare_with(
        &ch,
        &q,
        args(&[
            ("x-max-length", int(1)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    for m in ["first", "second"] {
        let confirm = timeout(ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            m.as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .expect("basic.publish");
        let outcome = timeout(confirm).await.expect("publish outcome");
        assert!(matches!(outcome, Confirmation::NotRequested), "{outcome:?}");
    }
    // A synchronous method on the same channel: both publishes have been handled.
    assert_eq!(get(&ch, &q).await.as_deref(), Some("first"));
    assert_eq!(get(&ch, &q).await, None);
}

// ---- dead-lettering ----

#[tokio::test]
async fn a_rejected_message_is_dead_lettered_with_a_full_x_death() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch, "orders").await;
    let source_exchange = unique("source");
    declare_exchange(&ch, &source_exchange, ExchangeKind::Direct).await;
    let q = unique("rejecting");
    declare_with(&ch, &q, args(&[("x-dead-letter-exchange", s(&dlx))])).await;
    bind(&ch, &q, &source_exchange, "orders").await;
    publish(&ch, &source_exchange, "orders", b"bad order").await;
    let got = timeout(ch.basic_get(q.as_str().into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .expect("the message");
    timeout(got.delivery.reject(BasicRejectOptions { requeue: false }))
        .await
        .unwrap();
    let mut dead = consume(&ch, &dlq, auto_ack()).await;
    let d = next_delivery(&mut dead).await;
    assert_eq!(body(&d), "bad order");
    assert_eq!(d.exchange.as_str(), dlx);
    assert_eq!(d.routing_key.as_str(), "orders");
    let x = deaths(&d.properties);
    assert_eq!(x.len(), 1);
    assert_eq!(header_int(&x[0], "count"), 1);
    assert_eq!(header_str(&x[0], "reason"), "rejected");
    assert_eq!(header_str(&x[0], "queue"), q);
    assert_eq!(header_str(&x[0], "exchange"), source_exchange);
    assert_eq!(header_strs(&x[0], "routing-keys"), vec!["orders"]);
    assert!(
        matches!(x[0].inner().get("time"), Some(AMQPValue::Timestamp(t)) if *t > 1_600_000_000)
    );
    assert!(!x[0].inner().contains_key("original-expiration"));
    let headers = d.properties.headers().clone().unwrap();
    assert_eq!(header_str(&headers, "x-first-death-reason"), "rejected");
    assert_eq!(header_str(&headers, "x-first-death-queue"), q);
    assert_eq!(
        header_str(&headers, "x-first-death-exchange"),
        source_exchange
    );
}

#[tokio::test]
async fn nack_without_requeue_dead_letters_and_requeue_does_not() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch, "k").await;
    let q = unique("nacking");
    declare_with(
        &ch,
        &q,
        args(&[
            ("x-dead-letter-exchange", s(&dlx)),
            ("x-dead-letter-routing-key", s("k")),
        ]),
    )
    .await;
    for m in ["a", "b"] {
        publish(&ch, "", &q, m.as_bytes()).await;
    }
    let first = timeout(ch.basic_get(q.as_str().into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .unwrap();
    timeout(first.delivery.nack(BasicNackOptions {
        multiple: false,
        requeue: true,
    }))
    .await
    .unwrap();
    let consumer_ch = channel(&conn).await;
    let mut consumer = consume(&consumer_ch, &q, BasicConsumeOptions::default()).await;
    let got = next_deliveries(&mut consumer, 2).await;
    timeout(got[1].nack(BasicNackOptions {
        multiple: true,
        requeue: false,
    }))
    .await
    .unwrap();
    let mut dead = consume(&ch, &dlq, auto_ack()).await;
    let bodies: Vec<String> = next_deliveries(&mut dead, 2)
        .await
        .iter()
        .map(body)
        .collect();
    assert_eq!(bodies, ["a", "b"]);
    assert_eq!(count(&conn, &q).await, 0);
}

#[tokio::test]
async fn an_expired_message_is_dead_lettered_with_its_original_expiration_recorded() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch, "expired-things").await;
    let q = unique("expiring");
    declare_with(
        &ch,
        &q,
        args(&[
            ("x-dead-letter-exchange", s(&dlx)),
            ("x-dead-letter-routing-key", s("expired-things")),
        ]),
    )
    .await;
    let mut dead = consume(&ch, &dlq, auto_ack()).await;
    let props = expiring("30").with_headers(args(&[(
        "CC",
        AMQPValue::FieldArray(vec![s("cc-key")].into()),
    )]));
    publish_with(&ch, "", &q, b"stale", props).await;
    let d = next_delivery(&mut dead).await;
    assert_eq!(body(&d), "stale");
    assert_eq!(d.routing_key.as_str(), "expired-things");
    assert_eq!(
        d.properties.expiration(),
        &None,
        "the dead letter does not expire again"
    );
    let x = deaths(&d.properties);
    assert_eq!(header_str(&x[0], "reason"), "expired");
    assert_eq!(header_str(&x[0], "queue"), q);
    assert_eq!(header_str(&x[0], "exchange"), "");
    assert_eq!(header_str(&x[0], "original-expiration"), "30");
    assert_eq!(
        header_strs(&x[0], "routing-keys"),
        vec![q.clone(), "cc-key".into()]
    );
    let headers = d.properties.headers().clone().unwrap();
    assert!(
        !headers.contains_key("CC"),
        "a dead-letter routing key replaces CC"
    );
}

#[tokio::test]
async fn drop_head_and_reject_publish_dlx_dead_letter_with_reason_maxlen() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch, "over").await;
    let drop_head = unique("drop-head");
    let reject = unique("reject-dlx");
    let common = |overflow: &str| {
        args(&[
            ("x-max-length", int(1)),
            ("x-overflow", s(overflow)),
            ("x-dead-letter-exchange", s(&dlx)),
            ("x-dead-letter-routing-key", s("over")),
        ])
    };
    declare_with(&ch, &drop_head, common("drop-head")).await;
    declare_with(&ch, &reject, common("reject-publish-dlx")).await;
    let mut dead = consume(&ch, &dlq, auto_ack()).await;

    publish(&ch, "", &drop_head, b"old").await;
    publish(&ch, "", &drop_head, b"new").await;
    let d = next_delivery(&mut dead).await;
    assert_eq!(body(&d), "old");
    assert_eq!(header_str(&deaths(&d.properties)[0], "reason"), "maxlen");
    assert_eq!(header_str(&deaths(&d.properties)[0], "queue"), drop_head);
    assert_eq!(get(&ch, &drop_head).await.as_deref(), Some("new"));

    publish(&ch, "", &reject, b"kept").await;
    let refused = publish_confirmation(&ch, "", &reject, b"refused", false).await;
    assert!(refused.is_nack(), "{refused:?}");
    let d = next_delivery(&mut dead).await;
    assert_eq!(body(&d), "refused");
    assert_eq!(header_str(&deaths(&d.properties)[0], "reason"), "maxlen");
    assert_eq!(header_str(&deaths(&d.properties)[0], "queue"), reject);
    assert_eq!(get(&ch, &reject).await.as_deref(), Some("kept"));
}

#[tokio::test]
async fn rejecting_back_into_the_same_queue_counts_deaths_and_is_not_a_cycle() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("reject-loop");
    declare_with(
        &ch,
        &q,
        args(&[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&q)),
        ]),
    )
    .await;
    publish(&ch, "", &q, b"boomerang").await;
    let mut consumer = consume(&ch, &q, BasicConsumeOptions::default()).await;
    for expected_count in [None, Some(1), Some(2)] {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(body(&d), "boomerang");
        match expected_count {
            None => assert!(d.properties.headers().is_none()),
            Some(n) => {
                let x = deaths(&d.properties);
                assert_eq!(x.len(), 1, "one entry per queue and reason");
                assert_eq!(header_int(&x[0], "count"), n);
                assert_eq!(header_str(&x[0], "reason"), "rejected");
            }
        }
        timeout(d.reject(BasicRejectOptions { requeue: false }))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_automatic_dead_letter_cycle_is_broken_without_a_rejection() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    // a --expired--> x1 --> b and watch1;  b --expired--> x2 --> a (a cycle) and watch2.
    let (a, b) = (unique("cycle-a"), unique("cycle-b"));
    let (x1, x2) = (unique("cycle-x1"), unique("cycle-x2"));
    let (watch1, watch2) = (unique("cycle-watch1"), unique("cycle-watch2"));
    declare_exchange(&ch, &x1, ExchangeKind::Fanout).await;
    declare_exchange(&ch, &x2, ExchangeKind::Fanout).await;
    let ttl_to = |x: &str| args(&[("x-message-ttl", int(20)), ("x-dead-letter-exchange", s(x))]);
    declare_with(&ch, &a, ttl_to(&x1)).await;
    declare_with(&ch, &b, ttl_to(&x2)).await;
    for w in [&watch1, &watch2] {
        declare_queue(&ch, w).await;
    }
    bind(&ch, &b, &x1, "").await;
    bind(&ch, &watch1, &x1, "").await;
    bind(&ch, &a, &x2, "").await;
    bind(&ch, &watch2, &x2, "").await;
    let mut seen1 = consume(&ch, &watch1, auto_ack()).await;
    let mut seen2 = consume(&ch, &watch2, auto_ack()).await;
    publish(&ch, "", &a, b"round and round").await;
    next_delivery(&mut seen1).await;
    let d = next_delivery(&mut seen2).await;
    let x = deaths(&d.properties);
    assert_eq!(x.len(), 2);
    assert_eq!(
        (header_str(&x[0], "queue"), header_str(&x[0], "reason")),
        (b.clone(), "expired".into())
    );
    assert_eq!(
        (header_str(&x[1], "queue"), header_str(&x[1], "reason")),
        (a.clone(), "expired".into())
    );
    assert_eq!(
        header_str(
            &d.properties.headers().clone().unwrap(),
            "x-first-death-queue"
        ),
        a
    );
    // The copy for `a` was dropped: nothing goes round a second time.
    assert_eq!(count(&conn, &a).await, 0);
    assert_no_delivery(&mut seen1).await;
    assert_eq!(count(&conn, &b).await, 0);
}

#[tokio::test]
async fn a_dead_letter_exchange_that_does_not_exist_just_drops_the_message() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = unique("dlx-missing");
    declare_with(
        &ch,
        &q,
        args(&[
            ("x-message-ttl", int(10)),
            ("x-dead-letter-exchange", s(&unique("nowhere"))),
        ]),
    )
    .await;
    publish(&ch, "", &q, b"lost").await;
    eventually("the message expired", || async {
        count(&conn, &q).await == 0
    })
    .await;
    // The channel is still fine.
    publish(&ch, "", &q, b"again").await;
}

// ---- arguments ----

#[tokio::test]
async fn invalid_limit_and_ttl_arguments_fail_with_406_naming_the_argument() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    // RabbitMQ 3.10.8's own words for each refusal.
    let cases: Vec<(FieldTable, &str, &str)> = vec![
        (
            args(&[("x-message-ttl", int(-1))]),
            "x-message-ttl",
            "{value_negative,-1}",
        ),
        (
            args(&[("x-message-ttl", s("10"))]),
            "x-message-ttl",
            "expected integer, got longstr",
        ),
        (
            args(&[("x-expires", int(0))]),
            "x-expires",
            "{value_zero,0}",
        ),
        (
            args(&[("x-expires", int(-5))]),
            "x-expires",
            "{value_negative,-5}",
        ),
        (
            args(&[("x-max-length", int(-1))]),
            "x-max-length",
            "value_negative",
        ),
        (
            args(&[("x-max-length", AMQPValue::Double(1.0))]),
            "x-max-length",
            "expected integer, got double",
        ),
        (
            args(&[("x-max-length-bytes", s("big"))]),
            "x-max-length-bytes",
            "expected integer",
        ),
        (
            args(&[("x-overflow", s("drop-tail"))]),
            "x-overflow",
            "invalid_overflow",
        ),
        (
            args(&[("x-overflow", int(1))]),
            "x-overflow",
            "{unacceptable_type,long}",
        ),
        (
            args(&[("x-dead-letter-exchange", int(1))]),
            "x-dead-letter-exchange",
            "invalid type 'long'",
        ),
        (
            args(&[("x-dead-letter-routing-key", s("k"))]),
            "x-dead-letter-routing-key",
            "routing_key_but_no_dlx_defined",
        ),
    ];
    for (arguments, name, why) in cases {
        let text = declare_refusal(&conn, &unique("bad-args"), arguments).await;
        assert!(text.contains(&format!("'{name}'")), "{name}: {text}");
        assert!(text.contains(why), "{name}: expected {why} in {text}");
    }
}

#[tokio::test]
async fn redeclaring_with_another_ttl_fails_with_406_naming_it() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let q = unique("redeclare-ttl");
    declare_with(&ch, &q, args(&[("x-message-ttl", int(1000))])).await;
    let text = declare_refusal(&conn, &q, args(&[("x-message-ttl", int(2000))])).await;
    assert!(text.contains("x-message-ttl"), "{text}");
    // The same arguments again are fine.
    declare_with(&ch, &q, args(&[("x-message-ttl", int(1000))])).await;
}
