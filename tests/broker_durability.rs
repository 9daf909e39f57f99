//! Durability of the broker's disk store, checked the way an operator would meet it: the
//! real `dispatch-broker` process is stopped (SIGTERM) or killed (SIGKILL), its store files
//! are truncated or corrupted, and it is restarted on the same data dir.
//!
//! What must hold: durable topology survives and transient topology does not; persistent
//! messages on durable queues survive, and every publisher-confirmed one survives a
//! `kill -9` exactly once; delivered-but-unacked messages come back with `redelivered`,
//! acked ones never come back; damaged files make the broker drop what is damaged, say so
//! on stderr, keep everything intact before it and start anyway; disk use falls back once
//! the queues drain.
//!
//! These tests need the broker process, so they skip (visibly) when
//! `DISPATCH_TEST_BROKER_URL` points the suite at another broker.

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use dispatch_broker::store::{MESSAGES_DIR, METADATA_FILE, SEGMENT_EXT, SEGMENT_SIZE};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind, PublisherConfirm};
use support::*;
use tokio::sync::{mpsc, watch};

/// `delivery_mode` of a persistent message.
const PERSISTENT: u8 = 2;

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(PERSISTENT)
}

/// Digits of the sequence number at the start of a [`numbered`] body.
const SEQ_DIGITS: usize = 10;

/// A body of exactly `len` bytes that carries `seq`: its digits, then dots.
fn numbered(seq: u32, len: usize) -> Vec<u8> {
    let mut body = format!("{seq:0SEQ_DIGITS$}").into_bytes();
    body.resize(len.max(SEQ_DIGITS), b'.');
    body
}

/// The sequence number of a body made by [`numbered`] with `len`, or `None` for any
/// other bytes (a damaged or foreign body).
fn seq_of(body: &[u8], len: usize) -> Option<u32> {
    if body.len() != len.max(SEQ_DIGITS) || body[SEQ_DIGITS..].iter().any(|&b| b != b'.') {
        return None;
    }
    std::str::from_utf8(&body[..SEQ_DIGITS]).ok()?.parse().ok()
}

async fn declare_exchange_with(ch: &Channel, name: &str, kind: ExchangeKind, durable: bool) {
    timeout(ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            durable,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
}

/// Publishes `count` persistent [`numbered`] bodies of `len` bytes to `queue`, each one
/// confirmed before the next is sent, so the store holds them in order.
async fn publish_numbered(ch: &Channel, queue: &str, count: u32, len: usize) {
    for seq in 0..count {
        publish_with(ch, "", queue, &numbered(seq, len), persistent()).await;
    }
}

/// Publishes with `mandatory` set and returns the broker's confirmation.
async fn publish_mandatory(ch: &Channel, exchange: &str, key: &str, body: &[u8]) -> Confirmation {
    let confirm = timeout(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        },
        body,
        persistent(),
    ))
    .await
    .expect("basic.publish");
    timeout(confirm).await.expect("publisher confirm")
}

/// Every message in `queue`: as many as a passive declare counts, then a quiet period
/// in which no further one may arrive. Taken with automatic acknowledgement.
async fn drain(conn: &Connection, queue: &str) -> Vec<Delivery> {
    let count = queue_exists(conn, queue)
        .await
        .unwrap_or_else(|e| panic!("queue {queue} after the restart: {e}"));
    let ch = channel(conn).await;
    let mut consumer = consume(
        &ch,
        queue,
        BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        },
    )
    .await;
    let deliveries = next_deliveries(&mut consumer, count as usize).await;
    assert_no_delivery(&mut consumer).await;
    deliveries
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(body).collect()
}

/// Restarts the stopped or killed broker on its data dir and connects to it.
async fn restart(broker: &mut TestBroker) -> Connection {
    broker.restart().await;
    connect(broker).await
}

/// Stops the broker with SIGTERM and checks that it exited cleanly.
async fn stop(broker: &mut TestBroker) {
    let status = broker.stop().await;
    assert!(
        status.success(),
        "dispatch-broker exited with {status}; its stderr:\n{}",
        broker.log()
    );
}

/// The segment files of the message log, oldest first.
fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join(MESSAGES_DIR);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == SEGMENT_EXT))
        .collect();
    paths.sort();
    paths
}

/// The segment written last (the highest number), which must hold something.
fn last_segment(data_dir: &Path) -> (PathBuf, u64) {
    let path = segments(data_dir)
        .pop()
        .expect("the message log has a segment");
    let len = std::fs::metadata(&path).expect("stat the segment").len();
    assert!(len > 0, "{} is empty", path.display());
    (path, len)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

/// Inverts `count` bytes of `path` starting at `at`.
fn flip_bytes(path: &Path, at: usize, count: usize) {
    let mut bytes = std::fs::read(path).expect("read the file to corrupt");
    for byte in &mut bytes[at..at + count] {
        *byte ^= 0xFF;
    }
    std::fs::write(path, bytes).expect("write the corrupted file");
}

/// Total size of the files in the message log (files that vanish meanwhile count 0).
fn message_log_size(data_dir: &Path) -> u64 {
    std::fs::read_dir(data_dir.join(MESSAGES_DIR))
        .expect("read the message log dir")
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .map(|meta| meta.len())
        .sum()
}

/// Asserts that the broker's stderr of this run has a WARN line containing every one of
/// `words`.
fn assert_warned(broker: &TestBroker, words: &[&str]) {
    let log = broker.log();
    assert!(
        log.lines()
            .any(|line| line.contains("WARN") && words.iter().all(|w| line.contains(w))),
        "expected a WARN line containing {words:?}; the broker's stderr:\n{log}"
    );
}

#[tokio::test]
async fn durable_topology_survives_a_restart_and_transient_topology_does_not() {
    let test = "durable_topology_survives_a_restart_and_transient_topology_does_not";
    let Some(mut broker) = TestBroker::start_process(test, &[]).await else {
        return;
    };
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let exchange = unique("orders");
    let queue = unique("orders-eu");
    let transient_exchange = unique("transient-exchange");
    let transient_queue = unique("transient-queue");
    let deleted_queue = unique("deleted");

    declare_exchange_with(&ch, &exchange, ExchangeKind::Topic, true).await;
    declare_durable_queue(&ch, &queue).await;
    bind(&ch, &queue, &exchange, "orders.eu.*").await;
    bind(&ch, &queue, &exchange, "orders.us.*").await;
    timeout(ch.queue_unbind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "orders.us.*".into(),
        FieldTable::default(),
    ))
    .await
    .expect("queue.unbind");
    declare_exchange_with(&ch, &transient_exchange, ExchangeKind::Fanout, false).await;
    bind(&ch, &queue, &transient_exchange, "").await;
    declare_queue(&ch, &transient_queue).await;
    bind(&ch, &transient_queue, &exchange, "#").await;
    declare_durable_queue(&ch, &deleted_queue).await;
    timeout(ch.queue_delete(deleted_queue.as_str().into(), QueueDeleteOptions::default()))
        .await
        .expect("queue.delete");
    drop(conn);

    stop(&mut broker).await;
    let conn = restart(&mut broker).await;

    exchange_exists(&conn, &exchange)
        .await
        .expect("the durable exchange survives the restart");
    assert_eq!(
        queue_exists(&conn, &queue)
            .await
            .expect("the durable queue survives the restart"),
        0
    );
    assert_amqp_error(exchange_exists(&conn, &transient_exchange).await, 404);
    assert_amqp_error(queue_exists(&conn, &transient_queue).await, 404);
    assert_amqp_error(queue_exists(&conn, &deleted_queue).await, 404);

    // Redeclaring with the same properties, as every client does on start, is accepted.
    let ch = confirm_channel(&conn).await;
    declare_exchange_with(&ch, &exchange, ExchangeKind::Topic, true).await;
    declare_durable_queue(&ch, &queue).await;

    // The topic binding routes; the binding removed before the restart stays removed.
    let routed = publish_mandatory(&ch, &exchange, "orders.eu.paris", b"to paris").await;
    assert!(routed.is_ack());
    assert!(
        routed.take_message().is_none(),
        "orders.eu.paris was returned: the binding did not survive"
    );
    let unrouted = publish_mandatory(&ch, &exchange, "orders.us.nyc", b"to nyc").await;
    let returned = unrouted
        .take_message()
        .expect("orders.us.nyc is unroutable: its binding was removed before the restart");
    assert_eq!(
        returned.error().map(|e| e.kind().clone()),
        Some(AMQPErrorKind::Soft(AMQPSoftError::NOROUTE))
    );
    assert_eq!(bodies(&drain(&conn, &queue).await), ["to paris"]);
}

/// The broker answers a durable declare, bind or delete only once the change is on disk:
/// a `kill -9` right after the answers loses none of them.
#[tokio::test]
async fn topology_changes_answered_before_a_kill_9_survive_it() {
    let test = "topology_changes_answered_before_a_kill_9_survive_it";
    let Some(mut broker) = TestBroker::start_process(test, &[]).await else {
        return;
    };
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let exchange = unique("commands");
    let queue = unique("minion");
    let auto_deleted = unique("auto-deleted");
    let emptied_by = unique("last-bound");
    let deleted = unique("deleted");
    let auto_queue = unique("auto-delete");
    declare_exchange_with(&ch, &exchange, ExchangeKind::Topic, true).await;
    declare_durable_queue(&ch, &queue).await;
    bind(&ch, &queue, &exchange, "minion.web.#").await;
    // A durable auto-delete exchange goes when its last queue does, and stays gone.
    timeout(ch.exchange_declare(
        auto_deleted.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("declare the auto-delete exchange");
    declare_durable_queue(&ch, &emptied_by).await;
    bind(&ch, &emptied_by, &auto_deleted, "").await;
    timeout(ch.queue_delete(emptied_by.as_str().into(), QueueDeleteOptions::default()))
        .await
        .expect("queue.delete");
    declare_durable_queue(&ch, &deleted).await;
    timeout(ch.queue_delete(deleted.as_str().into(), QueueDeleteOptions::default()))
        .await
        .expect("queue.delete");
    // A durable auto-delete queue goes with its last consumer's cancel.
    declare_queue_with(
        &ch,
        &auto_queue,
        QueueDeclareOptions {
            durable: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
    )
    .await;
    let consumer = consume(&ch, &auto_queue, BasicConsumeOptions::default()).await;
    timeout(ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()))
        .await
        .expect("basic.cancel");

    broker.kill().await;
    let conn = restart(&mut broker).await;

    exchange_exists(&conn, &exchange)
        .await
        .expect("the durable exchange survives the kill");
    queue_exists(&conn, &queue)
        .await
        .expect("the durable queue survives the kill");
    assert_amqp_error(exchange_exists(&conn, &auto_deleted).await, 404);
    assert_amqp_error(queue_exists(&conn, &emptied_by).await, 404);
    assert_amqp_error(queue_exists(&conn, &deleted).await, 404);
    assert_amqp_error(queue_exists(&conn, &auto_queue).await, 404);
    let ch = confirm_channel(&conn).await;
    let routed = publish_mandatory(&ch, &exchange, "minion.web.01", b"uptime").await;
    assert!(
        routed.take_message().is_none(),
        "minion.web.01 was returned: the binding did not survive the kill"
    );
    assert_eq!(bodies(&drain(&conn, &queue).await), ["uptime"]);
}

#[tokio::test]
async fn persistent_messages_on_durable_queues_survive_sigterm() {
    let test = "persistent_messages_on_durable_queues_survive_sigterm";
    let Some(mut broker) = TestBroker::start_process(test, &[]).await else {
        return;
    };
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let durable = unique("durable");
    let transient = unique("transient");
    let fanout = unique("fanout");
    declare_durable_queue(&ch, &durable).await;
    declare_queue(&ch, &transient).await;
    declare_exchange_with(&ch, &fanout, ExchangeKind::Fanout, true).await;
    bind(&ch, &durable, &fanout, "").await;
    bind(&ch, &transient, &fanout, "").await;

    let mut headers = FieldTable::default();
    headers.insert("attempt".into(), AMQPValue::LongInt(3));
    let described = persistent()
        .with_content_type("application/json".into())
        .with_correlation_id("job-7".into())
        .with_headers(headers.clone());
    publish_with(&ch, "", &durable, b"{\"job\":7}", described).await;
    publish_with(&ch, "", &durable, b"transient", BasicProperties::default()).await;
    publish_with(&ch, "", &durable, b"persistent", persistent()).await;
    publish_with(&ch, "", &transient, b"on a transient queue", persistent()).await;
    publish_with(&ch, &fanout, "", b"to both queues", persistent()).await;
    drop(conn);

    stop(&mut broker).await;
    let conn = restart(&mut broker).await;

    assert_amqp_error(queue_exists(&conn, &transient).await, 404);
    let survivors = drain(&conn, &durable).await;
    assert_eq!(
        bodies(&survivors),
        ["{\"job\":7}", "persistent", "to both queues"],
        "exactly the persistent messages survive, in their order"
    );
    assert!(
        survivors.iter().all(|d| !d.redelivered),
        "messages never delivered come back with redelivered=false"
    );
    let properties = &survivors[0].properties;
    assert_eq!(*properties.delivery_mode(), Some(PERSISTENT));
    assert_eq!(
        properties.content_type().as_ref().map(|v| v.as_str()),
        Some("application/json")
    );
    assert_eq!(
        properties.correlation_id().as_ref().map(|v| v.as_str()),
        Some("job-7")
    );
    assert_eq!(properties.headers().as_ref(), Some(&headers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_survives_a_kill_9_mid_stream() {
    const MESSAGES: u32 = 20_000;
    const BODY: usize = 64;
    /// Confirms awaited at once; the broker sees at most this many unconfirmed publishes.
    const IN_FLIGHT: usize = 1_000;
    /// The broker is killed once this many confirms have arrived.
    const KILL_AFTER: usize = 3_000;

    let test = "every_confirmed_message_survives_a_kill_9_mid_stream";
    let Some(mut broker) = TestBroker::start_process(test, &[]).await else {
        return;
    };
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = unique("kill-9");
    declare_durable_queue(&ch, &queue).await;

    let (pending_tx, mut pending_rx) = mpsc::channel::<(u32, PublisherConfirm)>(IN_FLIGHT);
    let (confirmed_tx, mut confirmed_rx) = watch::channel(0usize);
    let publisher = {
        let queue = queue.clone();
        tokio::spawn(async move {
            for seq in 0..MESSAGES {
                let body = numbered(seq, BODY);
                let publish = ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    persistent(),
                );
                // Fails once the broker is gone; the collector has stopped by then or
                // stops when this task drops its sender.
                let Ok(Ok(confirm)) = tokio::time::timeout(STEP_TIMEOUT, publish).await else {
                    return;
                };
                if pending_tx.send((seq, confirm)).await.is_err() {
                    return;
                }
            }
        })
    };
    let collector = tokio::spawn(async move {
        let mut acked = Vec::new();
        while let Some((seq, confirm)) = pending_rx.recv().await {
            match tokio::time::timeout(STEP_TIMEOUT, confirm).await {
                Ok(Ok(confirmation)) if confirmation.is_ack() => {
                    acked.push(seq);
                    confirmed_tx.send_replace(acked.len());
                }
                // A nack, or no answer because the broker died: either way unconfirmed.
                Ok(_) => {}
                Err(_) => panic!("confirm {seq} neither arrived nor failed in {STEP_TIMEOUT:?}"),
            }
        }
        acked
    });

    let reached = timeout(confirmed_rx.wait_for(|n| *n >= KILL_AFTER))
        .await
        .is_ok();
    assert!(
        reached,
        "the publishing stopped before {KILL_AFTER} confirms"
    );
    broker.kill().await;
    timeout(publisher).await.expect("the publisher task");
    let acked = timeout(collector).await.expect("the collector task");
    drop(conn);
    assert!(
        acked.len() < MESSAGES as usize,
        "all {MESSAGES} publishes were confirmed before the kill, so it did not hit \
         mid-stream: publish more"
    );

    let conn = restart(&mut broker).await;
    let recovered = drain(&conn, &queue).await;
    eprintln!(
        "{test}: {} of {MESSAGES} publishes confirmed before the kill; {} messages came back",
        acked.len(),
        recovered.len()
    );
    let mut seen = HashSet::new();
    for delivery in &recovered {
        let seq = seq_of(&delivery.data, BODY).unwrap_or_else(|| {
            panic!(
                "a body that was never published came back: {:?}",
                body(delivery)
            )
        });
        assert!(seen.insert(seq), "message {seq} came back twice");
        assert!(
            !delivery.redelivered,
            "message {seq} was never delivered, yet came back with redelivered=true"
        );
    }
    let lost: Vec<u32> = acked
        .iter()
        .copied()
        .filter(|seq| !seen.contains(seq))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} confirmed messages were lost in the kill (first: {:?}); {} came back",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)],
        recovered.len()
    );
}

/// How a test ends the broker's run before restarting it.
#[derive(Debug, Clone, Copy)]
enum Halt {
    Sigterm,
    Sigkill,
}

/// Ten persistent messages on a durable queue: m0..m5 delivered (prefetch 6), of which
/// m0..m2 acked; the broker halts and restarts. Expected back: m3..m5 redelivered, m6..m9
/// and a later message not redelivered, m0..m2 never.
async fn check_delivery_state_survives(test: &str, halt: Halt) {
    let Some(mut broker) = TestBroker::start_process(test, &[]).await else {
        return;
    };
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = unique("acks");
    declare_durable_queue(&ch, &queue).await;
    for i in 0..10 {
        publish_with(&ch, "", &queue, format!("m{i}").as_bytes(), persistent()).await;
    }

    let consumer_ch = confirm_channel(&conn).await;
    timeout(consumer_ch.basic_qos(6, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let mut consumer = consume(&consumer_ch, &queue, BasicConsumeOptions::default()).await;
    let delivered = next_deliveries(&mut consumer, 6).await;
    assert_eq!(bodies(&delivered), ["m0", "m1", "m2", "m3", "m4", "m5"]);
    // Without a consumer, the acks free no room for m6.. to be delivered.
    timeout(consumer_ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()))
        .await
        .expect("basic.cancel");
    for delivery in &delivered[..3] {
        timeout(consumer_ch.basic_ack(delivery.delivery_tag, BasicAckOptions::default()))
            .await
            .expect("basic.ack");
    }
    // A basic.ack has no reply. A publish on the same channel after it, once confirmed,
    // shows that the broker handled the acks and that the store has written them: the
    // store writes operations in the order the broker performed them.
    publish_with(&consumer_ch, "", &queue, b"after the acks", persistent()).await;

    match halt {
        Halt::Sigterm => stop(&mut broker).await,
        Halt::Sigkill => broker.kill().await,
    }
    drop(conn);
    let conn = restart(&mut broker).await;

    let recovered = drain(&conn, &queue).await;
    let mut redelivered: Vec<String> = Vec::new();
    let mut fresh: Vec<String> = Vec::new();
    for delivery in &recovered {
        let list = if delivery.redelivered {
            &mut redelivered
        } else {
            &mut fresh
        };
        list.push(body(delivery));
    }
    redelivered.sort();
    fresh.sort();
    assert_eq!(
        redelivered,
        ["m3", "m4", "m5"],
        "delivered but unacked messages come back with redelivered=true ({halt:?})"
    );
    assert_eq!(
        fresh,
        ["after the acks", "m6", "m7", "m8", "m9"],
        "messages never delivered come back with redelivered=false, acked ones not at all \
         ({halt:?})"
    );
}

#[tokio::test]
async fn delivered_but_unacked_messages_come_back_redelivered_and_acked_ones_never_do() {
    check_delivery_state_survives(
        "delivered_but_unacked_messages_come_back_redelivered_and_acked_ones_never_do",
        Halt::Sigkill,
    )
    .await;
}

#[tokio::test]
async fn delivered_but_unacked_messages_come_back_redelivered_after_sigterm_too() {
    check_delivery_state_survives(
        "delivered_but_unacked_messages_come_back_redelivered_after_sigterm_too",
        Halt::Sigterm,
    )
    .await;
}

#[tokio::test]
async fn a_truncated_segment_keeps_every_intact_message_and_reports_what_it_dropped() {
    const MESSAGES: u32 = 50;
    const BODY: usize = 256;
    let test = "a_truncated_segment_keeps_every_intact_message_and_reports_what_it_dropped";
    let Some(mut broker) = TestBroker::start_process(test, &[]).await else {
        return;
    };
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = unique("torn");
    declare_durable_queue(&ch, &queue).await;
    publish_numbered(&ch, &queue, MESSAGES, BODY).await;
    drop(conn);
    stop(&mut broker).await;

    // A torn write: the last record lost its final bytes.
    let (segment, len) = last_segment(&broker.data_dir());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|file| file.set_len(len - 3))
        .expect("truncate the segment");

    let conn = restart(&mut broker).await;
    assert_warned(&broker, &["dropped", &file_name(&segment)]);
    let recovered = drain(&conn, &queue).await;
    let seqs: Vec<Option<u32>> = recovered.iter().map(|d| seq_of(&d.data, BODY)).collect();
    let expected: Vec<Option<u32>> = (0..MESSAGES - 1).map(Some).collect();
    assert_eq!(
        seqs, expected,
        "every message but the torn last one comes back, in order"
    );

    // The repaired store keeps working: what is published now survives the next restart,
    // and nothing is dropped again.
    let ch = confirm_channel(&conn).await;
    publish_with(&ch, "", &queue, b"after the repair", persistent()).await;
    drop(conn);
    stop(&mut broker).await;
    let conn = restart(&mut broker).await;
    assert_eq!(bodies(&drain(&conn, &queue).await), ["after the repair"]);
    assert!(
        !broker.log().contains("dropped"),
        "the second recovery dropped something:\n{}",
        broker.log()
    );
}

#[tokio::test]
async fn a_corrupted_record_keeps_what_precedes_it() {
    const MESSAGES: u32 = 200;
    const BODY: usize = 256;
    let test = "a_corrupted_record_keeps_what_precedes_it";
    let Some(mut broker) = TestBroker::start_process(test, &[]).await else {
        return;
    };
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = unique("corrupt");
    declare_durable_queue(&ch, &queue).await;
    publish_numbered(&ch, &queue, MESSAGES, BODY).await;
    drop(conn);
    stop(&mut broker).await;

    let (segment, len) = last_segment(&broker.data_dir());
    flip_bytes(&segment, len as usize / 2, 4);

    let conn = restart(&mut broker).await;
    assert_warned(&broker, &["dropped", &file_name(&segment)]);
    let recovered = drain(&conn, &queue).await;
    for (i, delivery) in recovered.iter().enumerate() {
        assert_eq!(
            seq_of(&delivery.data, BODY),
            Some(i as u32),
            "delivery {i} is not the message published as number {i}: {:?}",
            body(delivery)
        );
    }
    // The segment holds equally sized records, one per message, so the middle byte lies
    // in message MESSAGES/2 (or MESSAGES/2 - 1 if the segment has a header): every
    // message before that one is intact and must come back, that one must not.
    let kept = recovered.len() as u32;
    assert!(
        (MESSAGES / 2 - 1..=MESSAGES / 2).contains(&kept),
        "{kept} of {MESSAGES} messages came back; expected the {} before the damage",
        MESSAGES / 2
    );
}

/// Declares a durable queue holding one persistent message, stops the broker, lets
/// `damage` act on the data dir and restarts it. Checks that the broker started, warned
/// about its metadata, and serves: a new durable queue with a persistent message works and
/// survives another restart. Returns the restarted broker and the name of the queue
/// declared before the damage.
async fn check_serves_after_metadata_damage(
    test: &str,
    damage: impl FnOnce(&Path),
) -> Option<(TestBroker, String)> {
    let mut broker = TestBroker::start_process(test, &[]).await?;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let before = unique("before-damage");
    declare_durable_queue(&ch, &before).await;
    publish_with(&ch, "", &before, b"old", persistent()).await;
    drop(conn);
    stop(&mut broker).await;

    damage(&broker.data_dir());

    let conn = restart(&mut broker).await;
    assert_warned(&broker, &["metadata"]);
    let ch = confirm_channel(&conn).await;
    let after = unique("after-damage");
    declare_durable_queue(&ch, &after).await;
    publish_with(&ch, "", &after, b"new", persistent()).await;
    drop(conn);
    stop(&mut broker).await;
    let conn = restart(&mut broker).await;
    assert_eq!(bodies(&drain(&conn, &after).await), ["new"]);
    Some((broker, before))
}

#[tokio::test]
async fn a_corrupt_metadata_file_does_not_stop_the_broker() {
    let test = "a_corrupt_metadata_file_does_not_stop_the_broker";
    let damage = |data_dir: &Path| {
        let path = data_dir.join(METADATA_FILE);
        let len = std::fs::metadata(&path).expect("the metadata file").len();
        flip_bytes(&path, len as usize / 2, 1);
    };
    let Some((broker, before)) = check_serves_after_metadata_damage(test, damage).await else {
        return;
    };
    // As the store promises: the topology it could not read is gone, not half-restored.
    let conn = connect(&broker).await;
    assert_amqp_error(queue_exists(&conn, &before).await, 404);
}

#[tokio::test]
async fn a_missing_metadata_file_does_not_stop_the_broker() {
    let test = "a_missing_metadata_file_does_not_stop_the_broker";
    // The message log still holds a message for a queue only the lost file named: the
    // operator must hear that the topology is gone, as for a corrupt file.
    let damage = |data_dir: &Path| {
        std::fs::remove_file(data_dir.join(METADATA_FILE)).expect("remove the metadata file");
    };
    let Some((broker, before)) = check_serves_after_metadata_damage(test, damage).await else {
        return;
    };
    let conn = connect(&broker).await;
    assert_amqp_error(queue_exists(&conn, &before).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_use_falls_back_after_the_queues_drain() {
    const BODY: usize = 64 * 1024;
    // Enough for more than one segment, so that a fully acknowledged one can go.
    let total = SEGMENT_SIZE + SEGMENT_SIZE / 4;
    let messages = (total / BODY as u64) as u32;
    let test = "disk_use_falls_back_after_the_queues_drain";
    let Some(broker) = TestBroker::start_process(test, &[]).await else {
        return;
    };
    let data_dir = broker.data_dir();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = unique("drain");
    declare_durable_queue(&ch, &queue).await;
    let body = vec![b'x'; BODY];
    for _ in 0..messages {
        let confirm = timeout(ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            persistent(),
        ))
        .await
        .expect("basic.publish");
        // Awaited together below.
        drop(confirm);
    }
    let returned = timeout(ch.wait_for_confirms())
        .await
        .expect("publisher confirms");
    assert!(returned.is_empty());
    let full = message_log_size(&data_dir);
    assert!(
        full >= total,
        "{messages} persistent messages of {BODY} bytes take only {full} bytes on disk"
    );

    let consumer_ch = channel(&conn).await;
    timeout(consumer_ch.basic_qos(100, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let mut consumer = consume(&consumer_ch, &queue, BasicConsumeOptions::default()).await;
    for _ in 0..messages {
        let delivery = next_delivery(&mut consumer).await;
        timeout(consumer_ch.basic_ack(delivery.delivery_tag, BasicAckOptions::default()))
            .await
            .expect("basic.ack");
    }
    assert_no_delivery(&mut consumer).await;

    eventually(
        "the message log shrinks once every message is acked",
        || std::future::ready(message_log_size(&data_dir) < full / 2),
    )
    .await;
}

/// A message that stays queued while much more traffic passes does not pin the message
/// log: once its segment is sparse, its live messages are copied forward and the segment
/// goes, so disk use falls back. After a `kill -9` they come back exactly once, marked
/// redelivered if a consumer had them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_messages_do_not_pin_the_message_log() {
    const BODY: usize = 64 * 1024;
    /// Publishes awaited together.
    const WINDOW: u32 = 128;
    // Three segments of traffic behind the long-lived messages.
    let messages = (3 * SEGMENT_SIZE / BODY as u64) as u32;
    let test = "long_lived_messages_do_not_pin_the_message_log";
    let Some(mut broker) = TestBroker::start_process(test, &[]).await else {
        return;
    };
    let data_dir = broker.data_dir();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (away, busy) = (unique("minion-away"), unique("busy"));
    let both = unique("both");
    declare_durable_queue(&ch, &away).await;
    declare_durable_queue(&ch, &busy).await;
    declare_exchange_with(&ch, &both, ExchangeKind::Fanout, true).await;
    bind(&ch, &away, &both, "").await;
    bind(&ch, &busy, &both, "").await;
    publish_with(&ch, "", &away, b"delivered, not acked", persistent()).await;
    // Stored once for two queues; acked on one, so only the other keeps it.
    publish_with(&ch, &both, "", b"waiting", persistent()).await;
    let holder = channel(&conn).await;
    timeout(holder.basic_qos(1, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let mut held = consume(&holder, &away, BasicConsumeOptions::default()).await;
    assert_eq!(
        body(&next_delivery(&mut held).await),
        "delivered, not acked"
    );

    let consumer_ch = channel(&conn).await;
    timeout(consumer_ch.basic_qos(100, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let mut consumer = consume(&consumer_ch, &busy, BasicConsumeOptions::default()).await;
    let copy = next_delivery(&mut consumer).await;
    assert_eq!(body(&copy), "waiting");
    timeout(consumer_ch.basic_ack(copy.delivery_tag, BasicAckOptions::default()))
        .await
        .expect("basic.ack");
    let traffic = vec![b't'; BODY];
    for sent in (0..messages).step_by(WINDOW as usize) {
        let window = WINDOW.min(messages - sent);
        for _ in 0..window {
            let confirm = timeout(ch.basic_publish(
                "".into(),
                busy.as_str().into(),
                BasicPublishOptions::default(),
                &traffic,
                persistent(),
            ))
            .await
            .expect("basic.publish");
            drop(confirm); // awaited together below
        }
        assert!(
            timeout(ch.wait_for_confirms())
                .await
                .expect("confirms")
                .is_empty()
        );
        for _ in 0..window {
            let delivery = next_delivery(&mut consumer).await;
            timeout(consumer_ch.basic_ack(delivery.delivery_tag, BasicAckOptions::default()))
                .await
                .expect("basic.ack");
        }
    }

    eventually(
        "the message log falls back below one segment, the long-lived messages copied forward",
        || std::future::ready(message_log_size(&data_dir) < SEGMENT_SIZE),
    )
    .await;
    assert_no_delivery(&mut held).await;

    broker.kill().await;
    let conn = restart(&mut broker).await;
    let back = drain(&conn, &away).await;
    assert_eq!(bodies(&back), ["delivered, not acked", "waiting"]);
    assert_eq!(
        back.iter().map(|d| d.redelivered).collect::<Vec<_>>(),
        [true, false],
        "only the message a consumer had comes back redelivered"
    );
    assert_eq!(queue_exists(&conn, &busy).await.expect("busy survives"), 0);
}

#[tokio::test]
async fn a_dead_lettered_persistent_message_survives_a_restart_in_its_dead_letter_queue() {
    let test = "a_dead_lettered_persistent_message_survives_a_restart_in_its_dead_letter_queue";
    let Some(mut broker) = TestBroker::start_process(test, &[]).await else {
        return;
    };
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (work, dead, dlx) = (unique("work"), unique("dead"), unique("dlx"));
    declare_exchange_with(&ch, &dlx, ExchangeKind::Fanout, true).await;
    declare_durable_queue(&ch, &dead).await;
    bind(&ch, &dead, &dlx, "").await;
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    timeout(ch.queue_declare(
        work.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    ))
    .await
    .expect("declare the work queue");
    publish_with(&ch, "", &work, b"rejected-and-kept", persistent()).await;
    let delivery = timeout(ch.basic_get(work.as_str().into(), BasicGetOptions::default()))
        .await
        .expect("basic.get")
        .expect("a message");
    timeout(delivery.reject(BasicRejectOptions { requeue: false }))
        .await
        .expect("reject");
    // The dead letter is in place once a passive declare counts it.
    assert_eq!(queue_exists(&conn, &dead).await.expect("dead queue"), 1);

    stop(&mut broker).await;
    let conn = restart(&mut broker).await;
    assert_eq!(
        bodies(&drain(&conn, &dead).await),
        vec!["rejected-and-kept"]
    );
    assert_eq!(queue_exists(&conn, &work).await.expect("work queue"), 0);
}

#[tokio::test]
async fn message_ttls_keep_running_across_a_restart() {
    let test = "message_ttls_keep_running_across_a_restart";
    let Some(mut broker) = TestBroker::start_process(test, &[]).await else {
        return;
    };
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (per_message, per_queue) = (unique("ttl-message"), unique("ttl-queue"));
    declare_durable_queue(&ch, &per_message).await;
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1500));
    timeout(ch.queue_declare(
        per_queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    ))
    .await
    .expect("declare the queue with a TTL");
    let expiring = persistent().with_expiration("1500".into());
    publish_with(&ch, "", &per_message, b"expires", expiring).await;
    publish_with(&ch, "", &per_message, b"stays", persistent()).await;
    publish_with(&ch, "", &per_queue, b"expires too", persistent()).await;

    stop(&mut broker).await;
    let conn = restart(&mut broker).await;
    // Without consumers or any other activity, the broker expires both on its own.
    eventually(
        "the message with an expiration expires after the restart",
        || async { queue_exists(&conn, &per_message).await.unwrap_or(0) == 1 },
    )
    .await;
    eventually(
        "the message in the TTL queue expires after the restart",
        || async { queue_exists(&conn, &per_queue).await.unwrap_or(1) == 0 },
    )
    .await;
    assert_eq!(bodies(&drain(&conn, &per_message).await), vec!["stays"]);
}
