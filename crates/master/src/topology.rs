//! Declares the AMQP topology the master owns (the table in docs/ARCHITECTURE.md): the
//! command and event exchanges, the results, RPC, key-request and expired queues, and
//! one durable queue per accepted minion with its bindings. Minions declare nothing.
//!
//! Minion queues are declared once with their final arguments (dead-letter exchange for
//! expired commands, a length limit that refuses further publishes), because a
//! redeclare with other arguments fails with 406 and would strand queued commands.

use crate::registry::KeyRecord;
use dispatch_common::names::{
    ALL_BINDING, COMMANDS_EXCHANGE, EVENTS_EXCHANGE, EXPIRED_EXCHANGE, EXPIRED_QUEUE,
    KEY_REQUESTS_QUEUE, MASTER_RPC_QUEUE, MINION_QUEUE_MAX_LENGTH, MINION_QUEUE_OVERFLOW,
    RESULTS_QUEUE, group_binding, minion_binding, minion_queue,
};
use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Declares the exchanges and the master's own queues.
pub async fn declare_master(channel: &Channel) -> lapin::Result<()> {
    for (name, kind) in [
        (COMMANDS_EXCHANGE, ExchangeKind::Topic),
        (EVENTS_EXCHANGE, ExchangeKind::Topic),
        (EXPIRED_EXCHANGE, ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(name.into(), kind, durable_exchange(), FieldTable::default())
            .await?;
    }
    for queue in [
        RESULTS_QUEUE,
        MASTER_RPC_QUEUE,
        EXPIRED_QUEUE,
        KEY_REQUESTS_QUEUE,
    ] {
        channel
            .queue_declare(queue.into(), durable_queue(), FieldTable::default())
            .await?;
    }
    channel
        .queue_bind(
            EXPIRED_QUEUE.into(),
            EXPIRED_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// The arguments every minion queue is declared with.
pub fn minion_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(EXPIRED_EXCHANGE)),
    );
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(MINION_QUEUE_MAX_LENGTH),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from(MINION_QUEUE_OVERFLOW)),
    );
    args
}

/// Declares the queue of an accepted minion and binds it by id, by each group and to
/// `all`, so commands can be queued for it before it ever connects again.
pub async fn declare_minion(channel: &Channel, minion: &KeyRecord) -> lapin::Result<()> {
    let queue = minion_queue(&minion.id);
    channel
        .queue_declare(
            queue.as_str().into(),
            durable_queue(),
            minion_queue_arguments(),
        )
        .await?;
    let keys = std::iter::once(minion_binding(&minion.id))
        .chain(minion.groups.iter().map(|g| group_binding(g)))
        .chain(std::iter::once(ALL_BINDING.to_owned()));
    for key in keys {
        channel
            .queue_bind(
                queue.as_str().into(),
                COMMANDS_EXCHANGE.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Whether minion `id` is consuming its queue now, i.e. connected. Asks with a passive
/// declare, which closes `channel` if the queue is missing: use a channel of its own.
pub async fn is_consuming(channel: &Channel, id: &str) -> lapin::Result<bool> {
    let queue = channel
        .queue_declare(
            minion_queue(id).into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(queue.consumer_count() > 0)
}

/// A consumer of every presence announcement, on an exclusive queue of the master's.
pub async fn watch_presence(connection: &lapin::Connection) -> lapin::Result<lapin::Consumer> {
    let channel = connection.create_channel().await?;
    let queue = dispatch_common::client::private_queue(&channel, FieldTable::default()).await?;
    channel
        .queue_bind(
            queue.clone(),
            EVENTS_EXCHANGE.into(),
            crate::presence::PRESENCE_BINDING.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_consume(
            queue,
            "master.presence".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Deletes the queue of a minion whose key was rejected or deleted.
pub async fn delete_minion(channel: &Channel, id: &str) -> lapin::Result<()> {
    channel
        .queue_delete(minion_queue(id).into(), QueueDeleteOptions::default())
        .await
        .map(drop)
}
