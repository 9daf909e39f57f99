//! Transient 1→1 throughput: one publisher connection, one consumer connection, one
//! exclusive queue between them, 256-byte non-persistent messages published as fast as a
//! window of [`WINDOW`] unconsumed messages allows. Counts consumed messages per second.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Result;
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::task::JoinSet;

use super::{BODY_SIZE, Ctx, Outcome, publish_and_measure};
use crate::flow::{self, Credit, Message, STEP_TIMEOUT, Settle, within};

/// Messages published but not yet consumed, at most.
const WINDOW: u32 = 2000;

/// Prefetch of the manual-ack consumer.
const PREFETCH: u16 = 1000;

/// How the consumer acknowledges.
#[derive(Debug, Clone, Copy)]
pub enum Acks {
    /// no-ack consumer.
    Auto,
    /// basic.ack per message, prefetch [`PREFETCH`].
    Manual,
}

pub async fn run(ctx: &Ctx, acks: Acks) -> Result<Outcome> {
    let consumer_conn = flow::connect(&ctx.url).await?;
    let publisher_conn = match flow::connect(&ctx.url).await {
        Ok(conn) => conn,
        Err(err) => {
            flow::close(&consumer_conn).await;
            return Err(err);
        }
    };
    let outcome = measure(ctx, acks, &consumer_conn, &publisher_conn).await;
    flow::close(&publisher_conn).await;
    flow::close(&consumer_conn).await;
    outcome
}

async fn measure(
    ctx: &Ctx,
    acks: Acks,
    consumer_conn: &lapin::Connection,
    publisher_conn: &lapin::Connection,
) -> Result<Outcome> {
    let queue = format!("{}.one-to-one", ctx.prefix);
    let consume_channel = within(
        STEP_TIMEOUT,
        "opening a channel",
        consumer_conn.create_channel(),
    )
    .await?;
    within(
        STEP_TIMEOUT,
        "declaring the queue",
        consume_channel.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let settle = match acks {
        Acks::Auto => Settle::AutoAck,
        Acks::Manual => {
            within(
                STEP_TIMEOUT,
                "setting prefetch",
                consume_channel.basic_qos(PREFETCH, BasicQosOptions::default()),
            )
            .await?;
            Settle::AckEach
        }
    };
    let consumer = within(
        STEP_TIMEOUT,
        "starting the consumer",
        consume_channel.basic_consume(
            queue.as_str().into(),
            "bench-consumer".into(),
            BasicConsumeOptions {
                no_ack: settle == Settle::AutoAck,
                ..BasicConsumeOptions::default()
            },
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

    let counter = Arc::new(AtomicU64::new(0));
    let credit = Credit::new(WINDOW);
    let mut workers = JoinSet::new();
    flow::spawn_counter(
        &mut workers,
        consumer,
        settle,
        counter.clone(),
        credit.clone(),
    );
    let message = Message {
        exchange: String::new(),
        routing_key: queue,
        properties: BasicProperties::default(),
        body: vec![b'x'; BODY_SIZE],
        deliveries: 1,
    };
    publish_and_measure(
        ctx,
        &mut workers,
        publish_channel,
        credit,
        message,
        &counter,
        "msg",
    )
    .await
}
