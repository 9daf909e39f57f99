//! queue.declare, purge and delete: server-named queues, passive declares, reserved names,
//! exclusive and auto-delete queues, if-unused / if-empty, and consumers of a deleted
//! queue being cancelled.

mod support;

use lapin::options::{BasicCancelOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::options::{QueueDeleteOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use support::*;

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn an_empty_name_gets_a_server_generated_amq_gen_name() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let first = declare_queue_with(&ch, "", exclusive()).await;
    let second = declare_queue_with(&ch, "", exclusive()).await;
    assert!(
        first.name().as_str().starts_with("amq.gen-"),
        "{}",
        first.name()
    );
    assert!(second.name().as_str().starts_with("amq.gen-"));
    assert_ne!(first.name(), second.name());
    assert!(first.name().as_str().len() > "amq.gen-".len());
    queue_exists(&conn, first.name().as_str()).await.unwrap();
}

#[tokio::test]
async fn a_passive_declare_of_a_missing_queue_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    assert_amqp_error(queue_exists(&conn, &unique("missing-q")).await, 404);
}

#[tokio::test]
async fn declare_ok_reports_message_and_consumer_counts() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let name = unique("counts");
    declare_queue_with(&ch, &name, exclusive()).await;
    for _ in 0..3 {
        publish(&ch, "", &name, b"m").await;
    }
    let again = declare_queue_with(&ch, &name, exclusive()).await;
    assert_eq!(again.message_count(), 3);
    assert_eq!(again.consumer_count(), 0);
    let other = channel(&conn).await;
    let _consumer = consume(&other, &name, BasicConsumeOptions::default()).await;
    let again = declare_queue_with(&ch, &name, exclusive()).await;
    assert_eq!(again.consumer_count(), 1);
}

#[tokio::test]
async fn declaring_a_queue_with_the_reserved_amq_prefix_fails_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_amqp_error(
        timeout(ch.queue_declare(
            format!("amq.{}", unique("mine")).as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await,
        403,
    );
}

#[tokio::test]
async fn redeclaring_a_queue_with_other_properties_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let name = unique("redeclare");
    declare_queue_with(&ch, &name, exclusive()).await;
    assert_amqp_error(
        timeout(ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await,
        406,
    );
}

#[tokio::test]
async fn another_connection_touching_an_exclusive_queue_gets_405() {
    let broker = TestBroker::start().await;
    let owner = connect(&broker).await;
    let ch = channel(&owner).await;
    let name = unique("exclusive");
    declare_queue_with(&ch, &name, exclusive()).await;

    let intruder = connect(&broker).await;
    let ch = channel(&intruder).await;
    assert_amqp_error(
        timeout(ch.basic_consume(
            name.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await,
        405,
    );
    let ch = channel(&intruder).await;
    assert_amqp_error(
        timeout(ch.queue_declare(name.as_str().into(), exclusive(), FieldTable::default())).await,
        405,
    );
}

#[tokio::test]
async fn an_exclusive_queue_vanishes_with_its_connection() {
    let broker = TestBroker::start().await;
    let owner = connect(&broker).await;
    let ch = channel(&owner).await;
    let name = unique("exclusive-gone");
    declare_queue_with(&ch, &name, exclusive()).await;
    let observer = connect(&broker).await;
    timeout(owner.close(200, "bye".into())).await.unwrap();
    // Deleting the owner's queues may finish just after close-ok: poll, bounded.
    eventually("the exclusive queue is deleted", || async {
        matches!(queue_exists(&observer, &name).await, Err(e) if amqp_code(&e) == Some(404))
    })
    .await;
}

#[tokio::test]
async fn an_auto_delete_queue_goes_away_after_its_last_consumer_cancels() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let name = unique("auto-delete");
    declare_queue_with(
        &ch,
        &name,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await;
    // Never consumed: it stays.
    queue_exists(&conn, &name)
        .await
        .expect("an auto-delete queue that never had a consumer stays");
    let first = consume(&ch, &name, BasicConsumeOptions::default()).await;
    let second = consume(&ch, &name, BasicConsumeOptions::default()).await;
    timeout(ch.basic_cancel(first.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    queue_exists(&conn, &name)
        .await
        .expect("one consumer left: still there");
    timeout(ch.basic_cancel(second.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    eventually("the auto-delete queue is deleted", || async {
        matches!(queue_exists(&conn, &name).await, Err(e) if amqp_code(&e) == Some(404))
    })
    .await;
}

#[tokio::test]
async fn purge_removes_ready_messages_and_reports_how_many() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let name = unique("purge");
    declare_queue_with(&ch, &name, exclusive()).await;
    for i in 0..5 {
        publish(&ch, "", &name, format!("m{i}").as_bytes()).await;
    }
    let purged = timeout(ch.queue_purge(name.as_str().into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(purged, 5);
    assert_eq!(queue_exists(&conn, &name).await.unwrap(), 0);
    let purged = timeout(ch.queue_purge(name.as_str().into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(purged, 0);
}

#[tokio::test]
async fn delete_reports_the_messages_it_dropped() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let name = unique("delete");
    declare_queue(&ch, &name).await;
    publish(&ch, "", &name, b"a").await;
    publish(&ch, "", &name, b"b").await;
    let dropped = timeout(ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert_eq!(dropped, 2);
    assert_amqp_error(queue_exists(&conn, &name).await, 404);
}

#[tokio::test]
async fn delete_if_unused_fails_with_406_while_the_queue_has_a_consumer() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let name = unique("if-unused");
    declare_queue_with(&ch, &name, exclusive()).await;
    let _consumer = consume(&ch, &name, BasicConsumeOptions::default()).await;
    let other = channel(&conn).await;
    assert_amqp_error(
        timeout(other.queue_delete(
            name.as_str().into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ))
        .await,
        406,
    );
    queue_exists(&conn, &name)
        .await
        .expect("a refused delete leaves the queue");
}

#[tokio::test]
async fn delete_if_empty_fails_with_406_while_the_queue_holds_messages() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let name = unique("if-empty");
    declare_queue_with(&ch, &name, exclusive()).await;
    publish(&ch, "", &name, b"still here").await;
    let if_empty = QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    assert_amqp_error(
        timeout(ch.queue_delete(name.as_str().into(), if_empty)).await,
        406,
    );
    assert_eq!(queue_exists(&conn, &name).await.unwrap(), 1);

    let ch = channel(&conn).await;
    timeout(ch.queue_purge(name.as_str().into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    timeout(ch.queue_delete(name.as_str().into(), if_empty))
        .await
        .expect("an empty queue is deleted with if-empty");
    assert_amqp_error(queue_exists(&conn, &name).await, 404);
}

#[tokio::test]
async fn consumers_of_a_deleted_queue_are_cancelled_by_the_broker() {
    let broker = TestBroker::start().await;
    let consumer_conn = connect(&broker).await;
    let ch = channel(&consumer_conn).await;
    let name = unique("deleted-under");
    declare_queue(&ch, &name).await;
    let mut first = consume(&ch, &name, BasicConsumeOptions::default()).await;
    let other_ch = channel(&consumer_conn).await;
    let mut second = consume(&other_ch, &name, BasicConsumeOptions::default()).await;

    let admin = connect(&broker).await;
    let admin_ch = channel(&admin).await;
    timeout(admin_ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default()))
        .await
        .unwrap();

    assert_cancelled(&mut first).await;
    assert_cancelled(&mut second).await;
    // The consumers' channels stay open.
    assert!(ch.status().connected());
    timeout(ch.basic_qos(5, Default::default()))
        .await
        .expect("the channel still works");
}
