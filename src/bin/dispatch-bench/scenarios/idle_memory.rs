//! Memory per idle connection: opens N connections (`--idle-connections`, default 1000),
//! each with one channel, one exclusive queue and one no-ack consumer, lets the broker
//! settle, and reports (broker RSS after − RSS before) / N. Without a broker pid only
//! checks that the broker takes N such connections.

use std::time::Duration;

use anyhow::{Context, Result};
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::task::JoinSet;

use super::{Ctx, Outcome};
use crate::flow::{self, STEP_TIMEOUT, within};

/// Connections being opened at once.
const PARALLEL_OPENS: usize = 32;

/// Pause before each RSS reading, so the broker's allocator and garbage collector settle.
const SETTLE: Duration = Duration::from_secs(3);

/// One idle client, kept alive for the measurement.
struct Idle {
    connection: Connection,
    _channel: Channel,
    _consumer: Consumer,
}

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    tokio::time::sleep(SETTLE).await;
    let before = ctx
        .probe
        .as_ref()
        .map(|probe| probe.rss_kib())
        .transpose()?;
    let mut idle = Vec::with_capacity(ctx.idle_connections as usize);
    let opened = open_all(ctx, &mut idle).await;
    let after = match opened {
        Ok(()) => {
            tokio::time::sleep(SETTLE).await;
            ctx.probe.as_ref().map(|probe| probe.rss_kib()).transpose()
        }
        Err(err) => Err(err),
    };
    close_all(idle).await;
    let after = after?;
    let kib_per_connection = match (before, after) {
        (Some(before), Some(after)) => {
            Some((after as f64 - before as f64) / f64::from(ctx.idle_connections))
        }
        _ => None,
    };
    Ok(Outcome::Memory { kib_per_connection })
}

async fn open_all(ctx: &Ctx, idle: &mut Vec<Idle>) -> Result<()> {
    let mut opening = JoinSet::new();
    for index in 0..ctx.idle_connections {
        if opening.len() >= PARALLEL_OPENS {
            idle.push(joined(opening.join_next().await)?);
        }
        let url = ctx.url.clone();
        let queue = format!("{}.idle{index}", ctx.prefix);
        opening.spawn(async move { open_one(&url, &queue).await });
    }
    while let Some(next) = opening.join_next().await {
        idle.push(joined(Some(next))?);
    }
    Ok(())
}

fn joined(next: Option<Result<Result<Idle>, tokio::task::JoinError>>) -> Result<Idle> {
    next.context("no connection was being opened")?
        .context("opening a connection panicked")?
}

async fn open_one(url: &str, queue: &str) -> Result<Idle> {
    let connection = flow::connect(url).await?;
    let channel = within(
        STEP_TIMEOUT,
        "opening a channel",
        connection.create_channel(),
    )
    .await?;
    within(
        STEP_TIMEOUT,
        "declaring an idle queue",
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
    let consumer = within(
        STEP_TIMEOUT,
        "starting an idle consumer",
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
    .await?;
    Ok(Idle {
        connection,
        _channel: channel,
        _consumer: consumer,
    })
}

async fn close_all(idle: Vec<Idle>) {
    let mut closing = JoinSet::new();
    for client in idle {
        if closing.len() >= PARALLEL_OPENS {
            closing.join_next().await;
        }
        closing.spawn(async move { flow::close(&client.connection).await });
    }
    while closing.join_next().await.is_some() {}
}
