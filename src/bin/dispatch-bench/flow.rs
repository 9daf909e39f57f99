//! The moving parts the rate scenarios share: a credit window between publisher and
//! consumers, a publisher loop, counting consumers, the measured window, and timeouts.
//!
//! Data flow of a rate scenario: the publisher takes credit for every delivery a publish
//! will cause (1, or N for a fan-out to N queues) before sending it; each consumer returns
//! one credit per delivery and bumps a shared counter. So at most `window` deliveries are
//! in flight, the broker is never flooded, and the counter is the end-to-end rate.
//! [`measure_rate`] samples counter and broker CPU after the warm-up and again after the
//! measured duration.
//!
//! Persistent scenarios publish on a confirm channel through [`publish_confirmed`]: a
//! second window bounds the publishes whose `basic.ack` has not come back, and a collector
//! task awaits the confirms in publish order, counting each acknowledged message once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    PublisherConfirm,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::pipeline::Pipeline;
use crate::probe::{Probe, TICKS_PER_SECOND};

/// Time allowed for one protocol round trip during set-up or teardown.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for one publisher confirm (or, while draining, one delivery) before the
/// broker is declared stalled.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

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

impl Message {
    /// One `basic.publish` of this message; lapin queues it when first polled.
    fn publish_on<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> impl Future<Output = lapin::Result<PublisherConfirm>> + 'a {
        channel.basic_publish(
            self.exchange.as_str().into(),
            self.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &self.body,
            self.properties.clone(),
        )
    }
}

/// Publishes `message` as fast as the credit allows until the credit is closed.
pub async fn publish_until_closed(
    channel: Channel,
    credit: Credit,
    message: Message,
) -> Result<()> {
    let mut publishes = Pipeline::new();
    while credit.take(message.deliveries).await {
        publishes
            .push(message.publish_on(&channel), "publishing")
            .await?;
    }
    publishes.finish("publishing").await?;
    Ok(())
}

/// Publishes `message` on `channel`, already in confirm mode, with at most `in_flight`
/// publishes unconfirmed, until `count` have been published or `credit` (when given)
/// closes; then waits for every outstanding confirm. `confirmed` counts acknowledged
/// publishes as their confirms arrive. A `basic.nack`, or a confirm missing for
/// [`CONFIRM_TIMEOUT`], is an error.
pub async fn publish_confirmed(
    channel: Channel,
    message: Message,
    in_flight: u32,
    count: u64,
    credit: Option<Credit>,
    confirmed: Arc<AtomicU64>,
) -> Result<()> {
    let window = Arc::new(Semaphore::new(in_flight as usize));
    let (pending, awaiting) = mpsc::unbounded_channel();
    let collector = tokio::spawn(collect_confirms(awaiting, confirmed));
    let published = publish_into_window(&channel, &message, &window, count, credit, &pending).await;
    drop(pending);
    let collected = match collector.await {
        Ok(result) => result,
        Err(err) => Err(err).context("the confirm collector panicked"),
    };
    // A collector error (nack, timeout) explains a failed publish better than the publish.
    collected.and(published)
}

async fn publish_into_window(
    channel: &Channel,
    message: &Message,
    window: &Arc<Semaphore>,
    count: u64,
    credit: Option<Credit>,
    pending: &mpsc::UnboundedSender<(PublisherConfirm, OwnedSemaphorePermit)>,
) -> Result<()> {
    let mut publishes = Pipeline::new();
    for _ in 0..count {
        if let Some(credit) = &credit
            && !credit.take(message.deliveries).await
        {
            break;
        }
        // Pending writes hold window slots until they reach the collector, so they are
        // collected while waiting for a free slot.
        let permit = loop {
            if let Ok(permit) = window.clone().try_acquire_owned() {
                break permit;
            }
            match publishes.next("publishing").await? {
                Some(written) => {
                    if !hand_to_collector(pending, vec![written]) {
                        return Ok(());
                    }
                }
                None => {
                    break window
                        .clone()
                        .acquire_owned()
                        .await
                        .context("confirm window closed")?;
                }
            }
        };
        let publish = message.publish_on(channel);
        let written = publishes
            .push(
                async move { publish.await.map(|confirm| (confirm, permit)) },
                "publishing",
            )
            .await?;
        if !hand_to_collector(pending, written) {
            return Ok(());
        }
    }
    let written = publishes.finish("publishing").await?;
    hand_to_collector(pending, written);
    Ok(())
}

/// Passes written publishes to the confirm collector; false once it has stopped early
/// (its result says why).
fn hand_to_collector(
    pending: &mpsc::UnboundedSender<(PublisherConfirm, OwnedSemaphorePermit)>,
    written: Vec<(PublisherConfirm, OwnedSemaphorePermit)>,
) -> bool {
    written
        .into_iter()
        .all(|confirm| pending.send(confirm).is_ok())
}

/// Awaits confirms in the order their publishes were written, releasing one window slot
/// per confirm.
async fn collect_confirms(
    mut awaiting: mpsc::UnboundedReceiver<(PublisherConfirm, OwnedSemaphorePermit)>,
    confirmed: Arc<AtomicU64>,
) -> Result<()> {
    while let Some((confirm, permit)) = awaiting.recv().await {
        match within(CONFIRM_TIMEOUT, "waiting for a publisher confirm", confirm).await? {
            Confirmation::Ack(_) => {
                confirmed.fetch_add(1, Ordering::Relaxed);
            }
            Confirmation::Nack(_) => bail!(
                "the broker nacked publish {} (basic.nack)",
                confirmed.load(Ordering::Relaxed) + 1
            ),
            Confirmation::NotRequested => {
                bail!("the channel is not in confirm mode (no confirm.select)")
            }
        }
        drop(permit);
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
        let mut acks = Pipeline::new();
        while let Some(delivery) = consumer.next().await {
            let acker = delivery.context("consuming")?.acker;
            if settle == Settle::AckEach {
                let sent = acks
                    .push(
                        async move { acker.ack(BasicAckOptions::default()).await },
                        "acking",
                    )
                    .await?;
                all_sent(&sent)?;
            }
            counter.fetch_add(1, Ordering::Relaxed);
            credit.give_back();
        }
        all_sent(&acks.finish("acking").await?)
    });
}

/// Checks the results of `basic.ack` writes: lapin answers `false` for an ack it could not
/// send (its channel is closed).
pub fn all_sent(acks: &[bool]) -> Result<()> {
    if acks.contains(&false) {
        bail!("an ack was not sent: the consumer's channel is closed");
    }
    Ok(())
}

/// A rate over the measured window, with broker CPU per counted unit when known.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub cpu_us_per_unit: Option<f64>,
}

/// Counters and broker CPU at one instant.
struct Sample {
    at: Instant,
    counts: Vec<u64>,
    cpu_ticks: Option<u64>,
}

impl Sample {
    fn take(counters: &[&AtomicU64], probe: Option<&Probe>) -> Result<Self> {
        Ok(Sample {
            at: Instant::now(),
            counts: counters
                .iter()
                .map(|counter| counter.load(Ordering::Relaxed))
                .collect(),
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
    let rates = measure_rates(&[counter], probe, warmup, duration, workers).await?;
    Ok(rates[0])
}

/// [`measure_rate`] for several counters over the same window; broker CPU is divided by
/// each counter's own units. Every counter must have moved.
pub async fn measure_rates(
    counters: &[&AtomicU64],
    probe: Option<&Probe>,
    warmup: Duration,
    duration: Duration,
    workers: &mut JoinSet<Result<()>>,
) -> Result<Vec<Rate>> {
    watch(workers, tokio::time::sleep(warmup)).await?;
    let start = Sample::take(counters, probe)?;
    watch(workers, tokio::time::sleep(duration)).await?;
    let end = Sample::take(counters, probe)?;
    let seconds = (end.at - start.at).as_secs_f64();
    let cpu_us = match (start.cpu_ticks, end.cpu_ticks) {
        (Some(before), Some(after)) => {
            Some((after - before) as f64 * 1e6 / TICKS_PER_SECOND as f64)
        }
        _ => None,
    };
    let mut rates = Vec::with_capacity(counters.len());
    for (before, after) in start.counts.iter().zip(&end.counts) {
        let units = after - before;
        if units == 0 {
            bail!("nothing was delivered during the measured window: is the broker stalled?");
        }
        rates.push(Rate {
            per_second: units as f64 / seconds,
            cpu_us_per_unit: cpu_us.map(|cpu_us| cpu_us / units as f64),
        });
    }
    Ok(rates)
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
