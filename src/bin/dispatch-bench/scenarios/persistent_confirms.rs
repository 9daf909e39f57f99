//! Persistent publishing with confirms: one publisher connection on a confirm channel, one
//! consumer connection, one durable queue between them. 256-byte persistent messages
//! (delivery_mode 2) are published with at most [`IN_FLIGHT`] unconfirmed, so every
//! publisher confirm waits for the broker's disk (fsync) and the broker can share each
//! flush among up to 1000 messages. The consumer takes them with prefetch [`PREFETCH`]
//! and one `basic.ack` each; at most [`UNCONSUMED`] messages are published but not yet
//! consumed, so a consumer slower than the disk paces the publisher instead of building a
//! backlog. Reports confirmed msg/s (the headline), consumed msg/s over the same window,
//! and broker CPU per confirmed message. The queue is deleted afterwards.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Result;
use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use tokio::task::JoinSet;

use super::{BODY_SIZE, Ctx, Outcome};
use crate::flow::{self, Credit, Message, STEP_TIMEOUT, Settle, within};

/// Publishes awaiting their confirm, at most.
pub const IN_FLIGHT: u32 = 1000;

/// Prefetch of the consumer.
pub const PREFETCH: u16 = 1000;

/// Messages published but not yet consumed, at most.
const UNCONSUMED: u32 = 5000;

/// AMQP delivery mode of a persistent message.
pub const PERSISTENT: u8 = 2;

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let consumer_conn = flow::connect(&ctx.url).await?;
    let publisher_conn = match flow::connect(&ctx.url).await {
        Ok(conn) => conn,
        Err(err) => {
            flow::close(&consumer_conn).await;
            return Err(err);
        }
    };
    let queue = format!("{}.persistent", ctx.prefix);
    let outcome = measure(ctx, &queue, &consumer_conn, &publisher_conn).await;
    flow::close(&consumer_conn).await;
    delete_queue(&publisher_conn, &queue).await;
    flow::close(&publisher_conn).await;
    outcome
}

/// Deletes a durable queue the scenario declared, whatever it still holds.
pub async fn delete_queue(connection: &lapin::Connection, queue: &str) {
    if let Ok(channel) = within(
        STEP_TIMEOUT,
        "opening a channel",
        connection.create_channel(),
    )
    .await
        && let Err(err) = within(
            STEP_TIMEOUT,
            "deleting the queue",
            channel.queue_delete(queue.into(), QueueDeleteOptions::default()),
        )
        .await
    {
        eprintln!("     could not delete {queue}: {err:#}");
    }
}

/// Declares `queue` durable (not exclusive, not auto-delete) on `channel`.
pub async fn declare_durable(channel: &lapin::Channel, queue: &str) -> Result<lapin::Queue> {
    within(
        STEP_TIMEOUT,
        "declaring the durable queue",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}

/// A 256-byte persistent message for the default exchange, routed to `queue`.
pub fn persistent_message(queue: &str) -> Message {
    Message {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        properties: BasicProperties::default().with_delivery_mode(PERSISTENT),
        body: vec![b'x'; BODY_SIZE],
        deliveries: 1,
    }
}

async fn measure(
    ctx: &Ctx,
    queue: &str,
    consumer_conn: &lapin::Connection,
    publisher_conn: &lapin::Connection,
) -> Result<Outcome> {
    let consume_channel = within(
        STEP_TIMEOUT,
        "opening a channel",
        consumer_conn.create_channel(),
    )
    .await?;
    declare_durable(&consume_channel, queue).await?;
    within(
        STEP_TIMEOUT,
        "setting prefetch",
        consume_channel.basic_qos(PREFETCH, BasicQosOptions::default()),
    )
    .await?;
    let consumer = within(
        STEP_TIMEOUT,
        "starting the consumer",
        consume_channel.basic_consume(
            queue.into(),
            "bench-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let publish_channel = within(
        STEP_TIMEOUT,
        "opening a channel",
        publisher_conn.create_channel(),
    )
    .await?;
    within(
        STEP_TIMEOUT,
        "selecting publisher confirms",
        publish_channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;

    let consumed = Arc::new(AtomicU64::new(0));
    let confirmed = Arc::new(AtomicU64::new(0));
    let credit = Credit::new(UNCONSUMED);
    let mut workers = JoinSet::new();
    flow::spawn_counter(
        &mut workers,
        consumer,
        Settle::AckEach,
        consumed.clone(),
        credit.clone(),
    );
    workers.spawn(flow::publish_confirmed(
        publish_channel,
        persistent_message(queue),
        IN_FLIGHT,
        u64::MAX,
        Some(credit.clone()),
        confirmed.clone(),
    ));

    let rates = flow::measure_rates(
        &[&confirmed, &consumed],
        ctx.probe.as_ref(),
        ctx.warmup,
        ctx.duration,
        &mut workers,
    )
    .await;
    credit.close();
    let rates = rates?;
    Ok(Outcome::Confirmed {
        confirmed_per_second: rates[0].per_second,
        consumed_per_second: rates[1].per_second,
        cpu_us: rates[0].cpu_us_per_unit,
    })
}
