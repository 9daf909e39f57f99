//! Fan-out: one publish delivered to N queues (`--fanout-queues`, default 1000), either
//! through a topic exchange where every queue is bound with `fan.#`, or through the default
//! exchange with a `BCC` header naming every queue (sender-selected distribution). The N
//! consumers (no-ack) share one connection, spread over [`CHANNELS`] channels; the
//! publisher has its own. Counts deliveries per second across all consumers.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Result;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use tokio::task::JoinSet;

use super::{BODY_SIZE, Ctx, Outcome, publish_and_measure};
use crate::flow::{self, Credit, Message, STEP_TIMEOUT, Settle, within};

/// Consumer channels the N queues are spread over.
const CHANNELS: usize = 10;

/// Publishes in flight (each worth N deliveries), at most.
const WINDOW_PUBLISHES: u32 = 4;

/// How one publish reaches every queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Topic exchange, each queue bound with `fan.#`.
    TopicBinding,
    /// Default exchange, `BCC` header listing every queue.
    BccHeader,
}

pub async fn run(ctx: &Ctx, routing: Routing) -> Result<Outcome> {
    let consumer_conn = flow::connect(&ctx.url).await?;
    let publisher_conn = match flow::connect(&ctx.url).await {
        Ok(conn) => conn,
        Err(err) => {
            flow::close(&consumer_conn).await;
            return Err(err);
        }
    };
    let exchange = format!("{}.fan", ctx.prefix);
    let outcome = measure(ctx, routing, &exchange, &consumer_conn, &publisher_conn).await;
    if routing == Routing::TopicBinding
        && let Ok(channel) = within(
            STEP_TIMEOUT,
            "opening a channel",
            publisher_conn.create_channel(),
        )
        .await
    {
        let _ = within(
            STEP_TIMEOUT,
            "deleting the exchange",
            channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
        )
        .await;
    }
    flow::close(&publisher_conn).await;
    flow::close(&consumer_conn).await;
    outcome
}

async fn measure(
    ctx: &Ctx,
    routing: Routing,
    exchange: &str,
    consumer_conn: &Connection,
    publisher_conn: &Connection,
) -> Result<Outcome> {
    let publish_channel = within(
        STEP_TIMEOUT,
        "opening a channel",
        publisher_conn.create_channel(),
    )
    .await?;
    if routing == Routing::TopicBinding {
        within(
            STEP_TIMEOUT,
            "declaring the topic exchange",
            publish_channel.exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    }

    let mut channels = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        channels.push(
            within(
                STEP_TIMEOUT,
                "opening a channel",
                consumer_conn.create_channel(),
            )
            .await?,
        );
    }
    let counter = Arc::new(AtomicU64::new(0));
    let window = WINDOW_PUBLISHES * ctx.fanout_queues;
    let credit = Credit::new(window);
    let mut workers = JoinSet::new();
    let mut queues = Vec::with_capacity(ctx.fanout_queues as usize);
    for index in 0..ctx.fanout_queues as usize {
        let queue = format!("{}.q{index}", ctx.prefix);
        let channel = &channels[index % CHANNELS];
        let bind_to = (routing == Routing::TopicBinding).then_some(exchange);
        let consumer = declare_and_consume(channel, &queue, bind_to).await?;
        flow::spawn_counter(
            &mut workers,
            consumer,
            Settle::AutoAck,
            counter.clone(),
            credit.clone(),
        );
        queues.push(queue);
    }

    let message = match routing {
        Routing::TopicBinding => Message {
            exchange: exchange.to_owned(),
            routing_key: "fan.out".to_owned(),
            properties: BasicProperties::default(),
            body: vec![b'x'; BODY_SIZE],
            deliveries: ctx.fanout_queues,
        },
        Routing::BccHeader => {
            let names: Vec<AMQPValue> = queues
                .iter()
                .map(|queue| AMQPValue::LongString(LongString::from(queue.as_str())))
                .collect();
            let mut headers = FieldTable::default();
            headers.insert("BCC".into(), AMQPValue::FieldArray(FieldArray::from(names)));
            Message {
                exchange: String::new(),
                routing_key: String::new(),
                properties: BasicProperties::default().with_headers(headers),
                body: vec![b'x'; BODY_SIZE],
                deliveries: ctx.fanout_queues,
            }
        }
    };
    publish_and_measure(
        ctx,
        &mut workers,
        publish_channel,
        credit,
        message,
        &counter,
        "delivery",
    )
    .await
}

/// Declares an exclusive queue, binds it with `fan.#` when given an exchange, and starts a
/// no-ack consumer on it.
async fn declare_and_consume(
    channel: &Channel,
    queue: &str,
    bind_to: Option<&str>,
) -> Result<lapin::Consumer> {
    within(
        STEP_TIMEOUT,
        "declaring a fan-out queue",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    if let Some(exchange) = bind_to {
        within(
            STEP_TIMEOUT,
            "binding a fan-out queue",
            channel.queue_bind(
                queue.into(),
                exchange.into(),
                "fan.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    within(
        STEP_TIMEOUT,
        "starting a fan-out consumer",
        channel.basic_consume(
            queue.into(),
            queue.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}
