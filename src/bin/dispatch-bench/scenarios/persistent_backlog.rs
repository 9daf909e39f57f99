//! A persistent backlog: N (`--backlog-messages`, default 1,000,000) 256-byte persistent
//! messages published with confirms ([`IN_FLIGHT`] unconfirmed at most) to a durable queue
//! that has no consumer, then drained.
//!
//! Phases, each bounded (no confirm or delivery for [`CONFIRM_TIMEOUT`] fails it):
//! 1. publish: N messages, timed from the first publish to the last confirm; broker CPU
//!    per message over the same span. The queue's message count (passive declare) must
//!    then be N.
//! 2. with the backlog queued and [`SETTLE`] later: broker RSS (VmRSS) and the disk use
//!    of the broker's data directory (the embedded broker's `--data-dir`, RabbitMQ's
//!    Mnesia directory), counted like `du`.
//! 3. drain: one consumer, prefetch [`PREFETCH`], one `basic.ack` per message, until the
//!    queue is empty; timed from `basic.consume` to the last ack sent.
//! 4. [`SETTLE_AFTER_DRAIN`] later: the disk use again (a store that reclaims acknowledged
//!    space shrinks back), and RSS on stderr.
//!
//! Progress goes to stderr every [`PROGRESS_EVERY`]. The queue is deleted afterwards.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::persistent_confirms::{
    IN_FLIGHT, PREFETCH, declare_durable, delete_queue, persistent_message,
};
use super::{Backlog, Ctx, Outcome};
use crate::flow::{self, CONFIRM_TIMEOUT, STEP_TIMEOUT, within};
use crate::pipeline::Pipeline;
use crate::probe::{self, Probe, TICKS_PER_SECOND};

/// Pause before reading RSS and disk use with the backlog queued.
const SETTLE: Duration = Duration::from_secs(3);

/// Pause after the drain before reading disk use, so the broker can reclaim space.
const SETTLE_AFTER_DRAIN: Duration = Duration::from_secs(5);

/// Interval of the progress lines on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let connection = flow::connect(&ctx.url).await?;
    let queue = format!("{}.backlog", ctx.prefix);
    let outcome = measure(ctx, &queue, &connection).await;
    delete_queue(&connection, &queue).await;
    flow::close(&connection).await;
    outcome.map(Outcome::Backlog)
}

async fn measure(ctx: &Ctx, queue: &str, connection: &Connection) -> Result<Backlog> {
    let probe = ctx.probe.as_ref();
    let messages = ctx.backlog_messages;
    let publish_channel = within(
        STEP_TIMEOUT,
        "opening a channel",
        connection.create_channel(),
    )
    .await?;
    declare_durable(&publish_channel, queue).await?;
    within(
        STEP_TIMEOUT,
        "selecting publisher confirms",
        publish_channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    eprintln!(
        "     before: broker RSS {}, data dir {}",
        show_bytes(read_rss(probe)?),
        show_bytes(read_disk(ctx)?)
    );

    // 1. Publish.
    let confirmed = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_ticks(probe)?;
    let started = Instant::now();
    with_progress(
        "confirmed",
        &confirmed,
        messages,
        flow::publish_confirmed(
            publish_channel.clone(),
            persistent_message(queue),
            IN_FLIGHT,
            messages,
            None,
            confirmed.clone(),
        ),
    )
    .await?;
    let publish_seconds = started.elapsed().as_secs_f64();
    let publish_cpu_us = cpu_us_per(probe, cpu_before, messages)?;
    let confirmed = confirmed.load(Ordering::Relaxed);
    if confirmed != messages {
        bail!("{confirmed} of {messages} publishes were confirmed");
    }
    let queued = u64::from(message_count(&publish_channel, queue).await?);
    eprintln!(
        "     published {messages} in {publish_seconds:.1} s; the queue holds {queued}{}",
        if queued == messages {
            String::new()
        } else {
            format!(" — {messages} were confirmed")
        }
    );

    // 2. Memory and disk with the backlog queued.
    tokio::time::sleep(SETTLE).await;
    let rss_bytes = read_rss(probe)?;
    let disk_bytes = read_disk(ctx)?;
    eprintln!(
        "     {queued} queued: broker RSS {}, data dir {}",
        show_bytes(rss_bytes),
        show_bytes(disk_bytes)
    );

    // 3. Drain.
    let consume_channel = within(
        STEP_TIMEOUT,
        "opening a channel",
        connection.create_channel(),
    )
    .await?;
    let cpu_before = cpu_ticks(probe)?;
    let started = Instant::now();
    let drained = Arc::new(AtomicU64::new(0));
    with_progress(
        "drained",
        &drained,
        queued,
        drain(&consume_channel, queue, queued, &drained),
    )
    .await?;
    let drain_seconds = started.elapsed().as_secs_f64();
    let drain_cpu_us = cpu_us_per(probe, cpu_before, queued)?;
    let left = message_count(&publish_channel, queue).await?;
    eprintln!("     drained {queued} in {drain_seconds:.1} s; {left} left in the queue");
    if left != 0 {
        bail!("{left} messages were still in the queue after {queued} were drained and acked");
    }

    // 4. Disk after the drain.
    tokio::time::sleep(SETTLE_AFTER_DRAIN).await;
    let disk_after_bytes = read_disk(ctx)?;
    eprintln!(
        "     drained: broker RSS {}, data dir {}",
        show_bytes(read_rss(probe)?),
        show_bytes(disk_after_bytes)
    );

    Ok(Backlog {
        messages,
        queued,
        publish_per_second: messages as f64 / publish_seconds,
        publish_cpu_us,
        rss_bytes,
        disk_bytes,
        drain_per_second: queued as f64 / drain_seconds,
        drain_cpu_us,
        disk_after_bytes,
    })
}

/// Consumes and acks `count` messages from `queue`, counting them in `drained`.
async fn drain(channel: &Channel, queue: &str, count: u64, drained: &AtomicU64) -> Result<()> {
    within(
        STEP_TIMEOUT,
        "setting prefetch",
        channel.basic_qos(PREFETCH, BasicQosOptions::default()),
    )
    .await?;
    let mut consumer = within(
        STEP_TIMEOUT,
        "starting the draining consumer",
        channel.basic_consume(
            queue.into(),
            "bench-drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let mut acks = Pipeline::new();
    let mut done = 0;
    while done < count {
        let delivery = match tokio::time::timeout(CONFIRM_TIMEOUT, consumer.next()).await {
            Err(_) => bail!(
                "no delivery for {CONFIRM_TIMEOUT:?} after {done} of {count}: is the broker stalled?"
            ),
            Ok(None) => bail!("the consumer was cancelled after {done} of {count} deliveries"),
            Ok(Some(delivery)) => delivery.context("consuming")?,
        };
        let acker = delivery.acker;
        let sent = acks
            .push(
                async move { acker.ack(BasicAckOptions::default()).await },
                "acking",
            )
            .await?;
        flow::all_sent(&sent)?;
        done += 1;
        drained.store(done, Ordering::Relaxed);
    }
    match tokio::time::timeout(CONFIRM_TIMEOUT, acks.finish("acking")).await {
        Ok(finished) => flow::all_sent(&finished?),
        Err(_) => bail!("the last acks were not written within {CONFIRM_TIMEOUT:?}"),
    }
}

/// Runs `work`, printing `counter` against `total` to stderr every [`PROGRESS_EVERY`].
async fn with_progress<T>(
    what: &str,
    counter: &AtomicU64,
    total: u64,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let started = Instant::now();
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    tokio::pin!(work);
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = ticks.tick() => {
                let done = counter.load(Ordering::Relaxed);
                let seconds = started.elapsed().as_secs_f64();
                eprintln!(
                    "     {what} {done} of {total} after {seconds:.0} s ({:.0} msg/s)",
                    done as f64 / seconds
                );
            }
        }
    }
}

async fn message_count(channel: &Channel, queue: &str) -> Result<u32> {
    let declared = within(
        STEP_TIMEOUT,
        "counting the queue's messages",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(declared.message_count())
}

fn cpu_ticks(probe: Option<&Probe>) -> Result<Option<u64>> {
    probe.map(Probe::cpu_ticks).transpose()
}

/// Broker CPU since `before`, in µs per unit.
fn cpu_us_per(probe: Option<&Probe>, before: Option<u64>, units: u64) -> Result<Option<f64>> {
    Ok(match (before, cpu_ticks(probe)?) {
        (Some(before), Some(after)) if units > 0 => {
            let cpu_us = (after - before) as f64 * 1e6 / TICKS_PER_SECOND as f64;
            Some(cpu_us / units as f64)
        }
        _ => None,
    })
}

fn read_rss(probe: Option<&Probe>) -> Result<Option<u64>> {
    Ok(probe.map(Probe::rss_kib).transpose()?.map(|kib| kib * 1024))
}

fn read_disk(ctx: &Ctx) -> Result<Option<u64>> {
    ctx.data_dir.as_deref().map(probe::disk_usage).transpose()
}

fn show_bytes(bytes: Option<u64>) -> String {
    match bytes {
        Some(bytes) => format!("{:.1} MB", bytes as f64 / 1e6),
        None => "n/a".to_owned(),
    }
}
