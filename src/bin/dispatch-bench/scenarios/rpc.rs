//! Request/reply round trip: a responder consumes a request queue and answers each request
//! on its `reply_to` queue with the same `correlation_id`; the requester (its own
//! connection, an exclusive reply queue) sends one 256-byte request at a time and times
//! it until the matching reply arrives. Reports p50 and p99 over the measured window and
//! broker CPU per round trip.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::task::JoinSet;

use super::{BODY_SIZE, Ctx, Outcome};
use crate::flow::{self, STEP_TIMEOUT, within};
use crate::probe::TICKS_PER_SECOND;

/// Longest wait for one reply before the scenario gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(ctx: &Ctx) -> Result<Outcome> {
    let responder_conn = flow::connect(&ctx.url).await?;
    let requester_conn = match flow::connect(&ctx.url).await {
        Ok(conn) => conn,
        Err(err) => {
            flow::close(&responder_conn).await;
            return Err(err);
        }
    };
    let outcome = measure(ctx, &responder_conn, &requester_conn).await;
    flow::close(&requester_conn).await;
    flow::close(&responder_conn).await;
    outcome
}

async fn measure(
    ctx: &Ctx,
    responder_conn: &Connection,
    requester_conn: &Connection,
) -> Result<Outcome> {
    let requests = format!("{}.requests", ctx.prefix);
    let replies = format!("{}.replies", ctx.prefix);
    let responder = within(
        STEP_TIMEOUT,
        "opening a channel",
        responder_conn.create_channel(),
    )
    .await?;
    let request_consumer = declare_and_consume(&responder, &requests).await?;
    let requester = within(
        STEP_TIMEOUT,
        "opening a channel",
        requester_conn.create_channel(),
    )
    .await?;
    let mut reply_consumer = declare_and_consume(&requester, &replies).await?;

    let mut workers = JoinSet::new();
    workers.spawn(respond(responder, request_consumer));

    let body = vec![b'x'; BODY_SIZE];
    let mut call = Call {
        channel: &requester,
        replies: &mut reply_consumer,
        requests: &requests,
        reply_to: &replies,
        body: &body,
        next_id: 0,
    };
    let warm_until = Instant::now() + ctx.warmup;
    while Instant::now() < warm_until {
        call.round_trip().await?;
    }
    let cpu_before = ctx
        .probe
        .as_ref()
        .map(|probe| probe.cpu_ticks())
        .transpose()?;
    let mut samples_ns = Vec::new();
    let end = Instant::now() + ctx.duration;
    while Instant::now() < end {
        samples_ns.push(call.round_trip().await?.as_nanos() as u64);
    }
    let cpu_after = ctx
        .probe
        .as_ref()
        .map(|probe| probe.cpu_ticks())
        .transpose()?;
    if let Some(ended) = workers.try_join_next() {
        ended.context("the responder panicked")??;
        bail!("the responder stopped early");
    }

    samples_ns.sort_unstable();
    let cpu_us = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => {
            Some((after - before) as f64 * 1e6 / TICKS_PER_SECOND as f64 / samples_ns.len() as f64)
        }
        _ => None,
    };
    Ok(Outcome::Latency {
        p50_us: percentile(&samples_ns, 0.50) as f64 / 1e3,
        p99_us: percentile(&samples_ns, 0.99) as f64 / 1e3,
        round_trips: samples_ns.len(),
        cpu_us,
    })
}

/// The requester's side of one call at a time.
struct Call<'a> {
    channel: &'a Channel,
    replies: &'a mut Consumer,
    requests: &'a str,
    reply_to: &'a str,
    body: &'a [u8],
    next_id: u64,
}

impl Call<'_> {
    async fn round_trip(&mut self) -> Result<Duration> {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let properties = BasicProperties::default()
            .with_reply_to(self.reply_to.into())
            .with_correlation_id(id.as_str().into());
        let start = Instant::now();
        self.channel
            .basic_publish(
                "".into(),
                self.requests.into(),
                BasicPublishOptions::default(),
                self.body,
                properties,
            )
            .await
            .context("publishing a request")?;
        let reply = match tokio::time::timeout(REPLY_TIMEOUT, self.replies.next()).await {
            Ok(Some(reply)) => reply.context("receiving a reply")?,
            Ok(None) => bail!("the reply consumer was cancelled"),
            Err(_) => bail!("no reply within {REPLY_TIMEOUT:?}"),
        };
        let elapsed = start.elapsed();
        let got = reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str());
        if got != Some(id.as_str()) {
            bail!("reply carries correlation id {got:?}, expected {id:?}");
        }
        Ok(elapsed)
    }
}

/// Answers every request on its `reply_to` queue with its `correlation_id`.
async fn respond(channel: Channel, mut requests: Consumer) -> Result<()> {
    while let Some(request) = requests.next().await {
        let request = request.context("receiving a request")?;
        let Some(reply_to) = request.properties.reply_to().clone() else {
            continue;
        };
        let mut properties = BasicProperties::default();
        if let Some(id) = request.properties.correlation_id().clone() {
            properties = properties.with_correlation_id(id);
        }
        channel
            .basic_publish(
                "".into(),
                reply_to,
                BasicPublishOptions::default(),
                &request.data,
                properties,
            )
            .await
            .context("publishing a reply")?;
    }
    Ok(())
}

async fn declare_and_consume(channel: &Channel, queue: &str) -> Result<Consumer> {
    within(
        STEP_TIMEOUT,
        "declaring a queue",
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
    within(
        STEP_TIMEOUT,
        "starting a consumer",
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

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_uses_the_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.50), 50);
        assert_eq!(percentile(&samples, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
    }
}
