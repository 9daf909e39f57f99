//! exchange.declare and exchange.delete: the predeclared exchanges, passive declares,
//! redeclares, reserved names, durable / auto-delete / internal flags and if-unused.

mod support;

use lapin::ExchangeKind;
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use support::*;

async fn declare(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
) -> lapin::Result<()> {
    timeout(ch.exchange_declare(name.into(), kind, options, FieldTable::default())).await
}

#[tokio::test]
async fn the_standard_exchanges_are_predeclared() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    for name in ["amq.direct", "amq.fanout", "amq.topic"] {
        exchange_exists(&conn, name)
            .await
            .unwrap_or_else(|e| panic!("{name} should exist: {e}"));
    }
}

#[tokio::test]
async fn a_passive_declare_of_a_missing_exchange_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    assert_amqp_error(exchange_exists(&conn, &unique("missing-x")).await, 404);
    // The channel error leaves the connection usable.
    channel(&conn).await;
}

#[tokio::test]
async fn a_declared_exchange_passes_a_passive_declare_and_an_identical_redeclare() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let name = unique("x");
    declare(&ch, &name, ExchangeKind::Topic, Default::default())
        .await
        .unwrap();
    declare(&ch, &name, ExchangeKind::Topic, Default::default())
        .await
        .expect("an identical redeclare is fine");
    exchange_exists(&conn, &name).await.unwrap();
    timeout(ch.exchange_delete(name.as_str().into(), Default::default()))
        .await
        .unwrap();
    assert_amqp_error(exchange_exists(&conn, &name).await, 404);
}

#[tokio::test]
async fn redeclaring_an_exchange_with_another_type_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let name = unique("x-type");
    declare(&ch, &name, ExchangeKind::Direct, Default::default())
        .await
        .unwrap();
    assert_amqp_error(
        declare(&ch, &name, ExchangeKind::Fanout, Default::default()).await,
        406,
    );
    let ch = channel(&conn).await;
    timeout(ch.exchange_delete(name.as_str().into(), Default::default()))
        .await
        .unwrap();
}

#[tokio::test]
async fn redeclaring_a_durable_exchange_as_transient_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let name = unique("x-durable");
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare(&ch, &name, ExchangeKind::Direct, durable)
        .await
        .unwrap();
    assert_amqp_error(
        declare(&ch, &name, ExchangeKind::Direct, Default::default()).await,
        406,
    );
    let ch = channel(&conn).await;
    timeout(ch.exchange_delete(name.as_str().into(), Default::default()))
        .await
        .unwrap();
}

#[tokio::test]
async fn declaring_an_exchange_with_the_reserved_amq_prefix_fails_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_amqp_error(
        declare(
            &ch,
            &format!("amq.{}", unique("mine")),
            ExchangeKind::Direct,
            Default::default(),
        )
        .await,
        403,
    );
}

#[tokio::test]
async fn deleting_an_exchange_if_unused_fails_with_406_while_it_has_bindings() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let exchange = unique("x-in-use");
    let queue = unique("q-in-use");
    declare_exchange(&ch, &exchange, ExchangeKind::Direct).await;
    declare_queue_with(
        &ch,
        &queue,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    bind(&ch, &queue, &exchange, "k").await;
    let if_unused = ExchangeDeleteOptions {
        if_unused: true,
        ..Default::default()
    };
    assert_amqp_error(
        timeout(ch.exchange_delete(exchange.as_str().into(), if_unused)).await,
        406,
    );
    exchange_exists(&conn, &exchange)
        .await
        .expect("a refused delete leaves the exchange");

    let ch = channel(&conn).await;
    timeout(ch.queue_unbind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "k".into(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    timeout(ch.exchange_delete(exchange.as_str().into(), if_unused))
        .await
        .expect("an unused exchange is deleted");
    assert_amqp_error(exchange_exists(&conn, &exchange).await, 404);
}

#[tokio::test]
async fn an_auto_delete_exchange_goes_away_with_its_last_binding() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let exchange = unique("x-auto");
    let queue = unique("q-auto");
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    declare(&ch, &exchange, ExchangeKind::Direct, auto_delete)
        .await
        .unwrap();
    declare_queue_with(
        &ch,
        &queue,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    bind(&ch, &queue, &exchange, "a").await;
    bind(&ch, &queue, &exchange, "b").await;
    timeout(ch.queue_unbind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "a".into(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    exchange_exists(&conn, &exchange)
        .await
        .expect("still bound once: still there");
    timeout(ch.queue_unbind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "b".into(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_amqp_error(exchange_exists(&conn, &exchange).await, 404);
}

#[tokio::test]
async fn publishing_to_an_internal_exchange_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let exchange = unique("x-internal");
    let internal = ExchangeDeclareOptions {
        internal: true,
        auto_delete: true,
        ..Default::default()
    };
    declare(&ch, &exchange, ExchangeKind::Fanout, internal)
        .await
        .unwrap();
    exchange_exists(&conn, &exchange).await.unwrap();
    let confirm = timeout(ch.basic_publish(
        exchange.as_str().into(),
        "".into(),
        BasicPublishOptions::default(),
        b"nope",
        BasicProperties::default(),
    ))
    .await
    .expect("publish is sent");
    assert_amqp_error(timeout(confirm).await, 403);
    let ch = channel(&conn).await;
    timeout(ch.exchange_delete(exchange.as_str().into(), Default::default()))
        .await
        .unwrap();
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_closes_the_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let confirm = timeout(ch.basic_publish(
        unique("x-nowhere").as_str().into(),
        "k".into(),
        BasicPublishOptions::default(),
        b"lost",
        BasicProperties::default(),
    ))
    .await
    .expect("publish is sent");
    assert_amqp_error(timeout(confirm).await, 404);
}
