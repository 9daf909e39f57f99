//! Durable topology at fleet scale: `--declare-queues` durable queues (10,000 by default,
//! one per minion of a large fleet), each declared and then bound to one durable topic
//! exchange, by [`CHANNELS`] channels in parallel, each awaiting every reply (as a master
//! declares the queues of newly accepted minions). Reports queues per second over the
//! whole run and over its last tenth — a broker whose cost per declare grows with the
//! topology already in place slows down there — and broker CPU per queue. The queues and
//! the exchange are deleted afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Result;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};
use tokio::task::JoinSet;

use super::persistent_confirms::declare_durable;
use super::{Ctx, Outcome};
use crate::flow::{self, STEP_TIMEOUT, within};
use crate::probe::TICKS_PER_SECOND;

/// Channels declaring at once.
pub const CHANNELS: u64 = 8;

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let conn = flow::connect(&ctx.url).await?;
    let exchange = format!("{}.commands", ctx.prefix);
    let declared = Arc::new(AtomicU64::new(0));
    let outcome = measure(ctx, &conn, &exchange, &declared).await;
    clean_up(ctx, &conn, &exchange, declared.load(Ordering::Relaxed)).await;
    flow::close(&conn).await;
    outcome
}

fn queue_name(ctx: &Ctx, index: u64) -> String {
    format!("{}.minion.{index:06}", ctx.prefix)
}

async fn open_channel(conn: &Connection) -> Result<Channel> {
    within(STEP_TIMEOUT, "opening a channel", conn.create_channel()).await
}

async fn measure(
    ctx: &Ctx,
    conn: &Connection,
    exchange: &str,
    declared: &Arc<AtomicU64>,
) -> Result<Outcome> {
    let channel = open_channel(conn).await?;
    within(
        STEP_TIMEOUT,
        "declaring the exchange",
        channel.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let total = ctx.declare_queues;
    let last_tenth = total - total / 10;
    let next = Arc::new(AtomicU64::new(0));
    let last_tenth_started = Arc::new(std::sync::OnceLock::new());
    let cpu_before = ctx.probe.map(|p| p.cpu_ticks()).transpose()?;
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..CHANNELS {
        let channel = open_channel(conn).await?;
        let (next, declared, marker) = (next.clone(), declared.clone(), last_tenth_started.clone());
        let (ctx, exchange) = (ctx.clone(), exchange.to_owned());
        workers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                if index == last_tenth {
                    let _ = marker.set(Instant::now());
                }
                let queue = queue_name(&ctx, index);
                declare_durable(&channel, &queue).await?;
                declared.fetch_max(index + 1, Ordering::Relaxed);
                within(
                    STEP_TIMEOUT,
                    "binding the queue",
                    channel.queue_bind(
                        queue.as_str().into(),
                        exchange.as_str().into(),
                        format!("minion.{index:06}").into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let ended = Instant::now();
    let cpu_after = ctx.probe.map(|p| p.cpu_ticks()).transpose()?;
    let tenth_from = *last_tenth_started.get().unwrap_or(&started);
    let cpu_us = cpu_before.zip(cpu_after).map(|(before, after)| {
        (after - before) as f64 * 1e6 / TICKS_PER_SECOND as f64 / total as f64
    });
    Ok(Outcome::Declares {
        per_second: total as f64 / (ended - started).as_secs_f64(),
        last_tenth_per_second: (total - last_tenth) as f64 / (ended - tenth_from).as_secs_f64(),
        cpu_us,
    })
}

/// Deletes the first `declared` queues and the exchange, [`CHANNELS`] at a time.
async fn clean_up(ctx: &Ctx, conn: &Connection, exchange: &str, declared: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..CHANNELS {
        let Ok(channel) = open_channel(conn).await else {
            break;
        };
        let (next, ctx) = (next.clone(), ctx.clone());
        workers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= declared {
                    return;
                }
                let queue = queue_name(&ctx, index);
                let deleted = within(
                    STEP_TIMEOUT,
                    "deleting a queue",
                    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
                )
                .await;
                if let Err(err) = deleted {
                    eprintln!("     could not delete {queue}: {err:#}");
                    return;
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    if let Ok(channel) = open_channel(conn).await
        && let Err(err) = within(
            STEP_TIMEOUT,
            "deleting the exchange",
            channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()),
        )
        .await
    {
        eprintln!("     could not delete {exchange}: {err:#}");
    }
}
