//! The moving parts the rate scenarios share: a credit window between publisher and
//! consumers, a publisher loop, counting consumers, the measured window, and timeouts.
//!
//! Data flow of a rate scenario: the publisher takes credit for every delivery a publish
//! will cause (1, or N for a fan-out to N queues) before sending it; each consumer returns
//! one credit per delivery and bumps a shared counter. So at most `window` deliveries are
//! in flight, the broker is never flooded, and the counter is the end-to-end rate.
//! [`measure_rate`] samples counter and broker CPU after the warm-up and again after the
//! measured duration.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::probe::{Probe, TICKS_PER_SECOND};

/// Time allowed for one protocol round trip during set-up or teardown.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Awaits `future` for at most `limit`, naming `what` if it takes longer.
pub async fn within<T, E>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result.with_context(|| what.to_owned()),
        Err(_) => bail!("{what}: no answer within {limit:?}"),
    }
}

/// Opens a connection, bounded by [`STEP_TIMEOUT`].
pub async fn connect(url: &str) -> Result<Connection> {
    within(
        STEP_TIMEOUT,
        "connecting",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
}

/// Closes a connection politely; a broker that does not answer is left to the socket drop.
pub async fn close(connection: &Connection) {
    let _ = within(
        Duration::from_secs(5),
        "closing",
        connection.close(200, "benchmark done".into()),
    )
    .await;
}

/// Credit shared by a publisher and its consumers; see the module doc.
#[derive(Debug, Clone)]
pub struct Credit(Arc<Semaphore>);

impl Credit {
    pub fn new(window: u32) -> Self {
        Credit(Arc::new(Semaphore::new(window as usize)))
    }

    /// Waits for `deliveries` credits; false once the window is closed.
    async fn take(&self, deliveries: u32) -> bool {
        match self.0.acquire_many(deliveries).await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    fn give_back(&self) {
        self.0.add_permits(1);
    }

    /// Stops the publisher at its next publish.
    pub fn close(&self) {
        self.0.close();
    }
}

/// One message as the publisher sends it, again and again.
#[derive(Debug, Clone)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
    /// Deliveries one publish causes.
    pub deliveries: u32,
}

/// Publishes `message` as fast as the credit allows until the credit is closed.
pub async fn publish_until_closed(
    channel: Channel,
    credit: Credit,
    message: Message,
) -> Result<()> {
    while credit.take(message.deliveries).await {
        channel
            .basic_publish(
                message.exchange.as_str().into(),
                message.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &message.body,
                message.properties.clone(),
            )
            .await
            .context("publishing")?;
    }
    Ok(())
}

/// How a counting consumer settles its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// The consumer was started with no-ack: nothing to send back.
    AutoAck,
    /// One basic.ack per delivery.
    AckEach,
}

/// Consumes until the stream ends, counting deliveries and returning credit.
pub fn spawn_counter(
    tasks: &mut JoinSet<Result<()>>,
    mut consumer: Consumer,
    settle: Settle,
    counter: Arc<AtomicU64>,
    credit: Credit,
) {
    tasks.spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.context("consuming")?;
            if settle == Settle::AckEach {
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .context("acking")?;
            }
            counter.fetch_add(1, Ordering::Relaxed);
            credit.give_back();
        }
        Ok(())
    });
}

/// A rate over the measured window, with broker CPU per counted unit when known.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub cpu_us_per_unit: Option<f64>,
}

/// Counter and broker CPU at one instant.
struct Sample {
    at: Instant,
    count: u64,
    cpu_ticks: Option<u64>,
}

impl Sample {
    fn take(counter: &AtomicU64, probe: Option<&Probe>) -> Result<Self> {
        Ok(Sample {
            at: Instant::now(),
            count: counter.load(Ordering::Relaxed),
            cpu_ticks: probe.map(Probe::cpu_ticks).transpose()?,
        })
    }
}

/// Lets traffic run for `warmup`, then measures `counter` over `duration`.
/// `workers` are the tasks producing the traffic: if one fails, so does the measurement.
pub async fn measure_rate(
    counter: &AtomicU64,
    probe: Option<&Probe>,
    warmup: Duration,
    duration: Duration,
    workers: &mut JoinSet<Result<()>>,
) -> Result<Rate> {
    watch(workers, tokio::time::sleep(warmup)).await?;
    let start = Sample::take(counter, probe)?;
    watch(workers, tokio::time::sleep(duration)).await?;
    let end = Sample::take(counter, probe)?;
    let units = end.count - start.count;
    if units == 0 {
        bail!("nothing was delivered during the measured window: is the broker stalled?");
    }
    let seconds = (end.at - start.at).as_secs_f64();
    let cpu_us_per_unit = match (start.cpu_ticks, end.cpu_ticks) {
        (Some(before), Some(after)) => {
            let cpu_us = (after - before) as f64 * 1e6 / TICKS_PER_SECOND as f64;
            Some(cpu_us / units as f64)
        }
        _ => None,
    };
    Ok(Rate {
        per_second: units as f64 / seconds,
        cpu_us_per_unit,
    })
}

/// Waits for `pause` unless a worker ends first: workers run until told to stop, so one
/// that ends early has failed, and the measurement with it.
async fn watch(workers: &mut JoinSet<Result<()>>, pause: impl Future<Output = ()>) -> Result<()> {
    tokio::select! {
        () = pause => Ok(()),
        Some(ended) = workers.join_next() => match ended {
            Ok(Ok(())) => bail!("a publisher or consumer stopped early (connection closed by the broker?)"),
            Ok(Err(err)) => Err(err),
            Err(err) => Err(err).context("a publisher or consumer panicked"),
        },
    }
}
