//! `dispatch master`: the daemon.
//!
//! Start-up: load (or create) the master and local operator keys, open the key registry,
//! start the embedded broker with the registry as its gatekeeper (unless `--broker`
//! names an external one), open the job store, connect to the broker (the embedded one
//! with the master key), declare the topology and every accepted minion's queue, then
//! serve until SIGTERM: the RPC, results, presence, key-request and expired-command
//! consumers, queue declarations for keys auto-accepted during a login, the scheduler
//! and the retention pruning. A consumer that fails stops the daemon with an error (so a
//! supervisor restarts it). Shutdown closes the AMQP connection, then the broker (320 to
//! its clients).

use crate::authority::{Accepted, RegistryAuthority, SharedRegistry};
use crate::connected::Connected;
use crate::history::{History, PRUNE_EVERY};
use crate::jobs::Jobs;
use crate::layout::{DataDir, LOCAL_OPERATOR_ID, MASTER_ID};
use crate::presence::PresenceBook;
use crate::registry::{AutoAccept, Registry};
use crate::rpc::{Responder, RpcServer};
use crate::schedule::SystemClock;
use crate::scheduler::Scheduler;
use crate::store::JobStore;
use crate::tasks::{STEP_GRACE, Tasks};
use crate::{key_requests, results, topology};
use anyhow::Context;
use dispatch_broker::{Broker, BrokerConfig, User};
use dispatch_common::keys::{Fingerprint, KeyPair};
use dispatch_common::names::{EXPIRED_QUEUE, KEY_REQUESTS_QUEUE, MASTER_RPC_QUEUE, RESULTS_QUEUE};
use dispatch_common::rpc::Role;
use dispatch_common::sasl::SaslClient;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Deliveries the master takes from each of its queues at once.
const PREFETCH: u16 = 64;

/// What `dispatch master` was told.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub listen: SocketAddr,
    pub data_dir: DataDir,
    /// An external broker (RabbitMQ) instead of the embedded one.
    pub broker_url: Option<String>,
    pub auto_accept: AutoAccept,
    /// PLAIN/AMQPLAIN users of the embedded broker, for standard AMQP clients.
    pub plain_users: Vec<User>,
    /// How long jobs and their returns are kept.
    pub keep_jobs: Duration,
    /// The embedded broker's `--disk-free-limit`, in bytes (0: off).
    pub disk_free_limit: u64,
}

/// What a started master tells whoever started it.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Where the embedded broker listens, for minions and the CLI (`None` with an
    /// external broker).
    pub listening: Option<String>,
    /// The broker URL the master uses, without its password.
    pub broker: String,
    pub fingerprint: Fingerprint,
}

/// Runs the master until `shutdown` completes; `ready` is called once it serves.
pub async fn run(
    config: MasterConfig,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(&Ready),
) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.root())
        .with_context(|| format!("creating the data dir {}", dir.root().display()))?;
    let master = KeyPair::load_or_create(&dir.master_key())?;
    let operator = KeyPair::load_or_create(&dir.operator_key())?;
    let mut registry = Registry::open(&dir.keys(), config.auto_accept.clone())?;
    registry.ensure_accepted(LOCAL_OPERATOR_ID, Role::Operator, &operator.public())?;
    let registry = SharedRegistry::new(registry);
    let fingerprint = master.public().fingerprint();
    tracing::info!(%fingerprint, "master key");

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let accepted = Arc::new(Accepted::default());
    let (url, broker) = match &config.broker_url {
        Some(url) => (url.clone(), None),
        None => {
            let broker_config = BrokerConfig {
                users: config.plain_users.clone(),
                data_dir: Some(dir.broker()),
                disk_free_limit: config.disk_free_limit,
                key_authority: Some(Arc::new(RegistryAuthority {
                    master_key: master.public(),
                    registry: registry.clone(),
                    accepted: accepted.clone(),
                })),
                ..BrokerConfig::default()
            };
            let broker =
                Arc::new(Broker::open(broker_config).context("opening the broker's store")?);
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            let addr = listener.local_addr()?;
            let broker_stop = stop.clone();
            tasks.spawn(dispatch_broker::serve(
                listener,
                broker.clone(),
                async move { broker_stop.cancelled().await },
            ));
            let local = if addr.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            } else {
                addr
            };
            (format!("amqp://{local}/%2f"), Some(broker))
        }
    };
    let parts = Parts {
        url,
        master,
        registry,
        accepted,
        broker,
        keep_jobs: config.keep_jobs,
    };
    let served = serve(&parts, dir, &tasks, shutdown, ready).await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    served
}

/// What start-up made, for the serving part.
struct Parts {
    /// The broker's URL, for the master's own connection.
    url: String,
    master: KeyPair,
    registry: SharedRegistry,
    accepted: Arc<Accepted>,
    /// The embedded broker, when there is one.
    broker: Option<Arc<Broker>>,
    keep_jobs: Duration,
}

/// Connects to the broker, declares the topology, prints the ready line and serves
/// until `shutdown`.
async fn serve(
    parts: &Parts,
    dir: &DataDir,
    tasks: &TaskTracker,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(&Ready),
) -> anyhow::Result<()> {
    let Parts {
        url,
        master,
        registry,
        accepted,
        broker,
        keep_jobs,
    } = parts;
    let store = Arc::new(JobStore::open(&dir.jobs())?);
    let sasl = SaslClient::new(master.clone(), MASTER_ID, Role::Operator, &[]);
    let connection = dispatch_common::client::connect(url, sasl, MASTER_ID)
        .await
        .map(Arc::new)
        .with_context(|| format!("connecting to the broker at {url}"))?;
    let channel = connection.create_channel().await?;
    topology::declare_master(&channel).await?;
    let minions = registry.lock().accepted_with_role(Role::Minion);
    for minion in minions {
        topology::declare_minion(&channel, &minion).await?;
    }
    let rpc = consume(&connection, MASTER_RPC_QUEUE).await?;
    let replies = consume(&connection, RESULTS_QUEUE).await?;
    let announcements = topology::watch_presence(&connection).await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let presence = Arc::new(PresenceBook::default());
    let responder = Arc::new(Responder {
        master: master.clone(),
        channel: connection.create_channel().await?,
    });
    let loops = CancellationToken::new();
    // However `serve` returns, the loops spawned from here on stop.
    let _stop_loops = loops.clone().drop_guard();
    tasks.spawn(
        loops
            .clone()
            .run_until_cancelled_owned(dispatch_common::client::log_blocking(
                connection.events_listener(),
            )),
    );
    let history = History::new(store, responder, Tasks::new(tasks.clone(), loops.clone()));
    let jobs = Jobs::new(
        master.clone(),
        registry.clone(),
        presence.clone(),
        history.clone(),
        publisher,
        Connected::open(broker.clone(), &connection).await?,
        connection.clone(),
    );
    // Before returns are consumed: a return may release the next minions of a batch.
    jobs.resume_batches().await;
    let scheduler = Scheduler::open(jobs.clone(), history.clone(), Arc::new(SystemClock))?;
    let broker_url = dispatch_common::client::redact(url);
    tracing::info!(
        "dispatch master {} ready on {broker_url}",
        dispatch_common::VERSION
    );
    ready(&Ready {
        listening: broker.as_ref().map(|_| {
            url.trim_start_matches("amqp://")
                .trim_end_matches("/%2f")
                .to_owned()
        }),
        broker: broker_url,
        fingerprint: master.public().fingerprint(),
    });

    tasks.spawn(scheduler.clone().run(loops.clone()));
    let server = Arc::new(RpcServer {
        registry: registry.clone(),
        channel: rpc.0.clone(),
        jobs: jobs.clone(),
        scheduler: scheduler.clone(),
        broker: broker.clone(),
    });
    tasks.spawn(consume_loop("rpc", rpc.1, loops.clone(), move |delivery| {
        let server = server.clone();
        async move { server.handle(delivery).await }
    }));
    let (replies_channel, replies_jobs) = (replies.0.clone(), jobs.clone());
    tasks.spawn(consume_loop(
        "results",
        replies.1,
        loops.clone(),
        move |delivery| {
            let (channel, jobs) = (replies_channel.clone(), replies_jobs.clone());
            async move { results::handle(delivery, &jobs, &channel).await }
        },
    ));
    let presence_registry = registry.clone();
    tasks.spawn(consume_loop(
        "presence",
        announcements,
        loops.clone(),
        move |delivery| {
            if let Err(e) = presence.record(&delivery.data, &presence_registry) {
                tracing::warn!("dropped a presence announcement: {e}");
            }
            std::future::ready(Ok(()))
        },
    ));
    tasks.spawn(declare_loop(
        channel.clone(),
        accepted.clone(),
        loops.clone(),
    ));
    let steps = history.tasks.clone();
    tasks.spawn(prune_loop(history, *keep_jobs, loops.clone()));
    let requests = consume(&connection, KEY_REQUESTS_QUEUE).await?;
    let (requests_channel, requests_registry) = (requests.0.clone(), registry.clone());
    let requests_accepted = accepted.clone();
    tasks.spawn(consume_loop(
        "key requests",
        requests.1,
        loops.clone(),
        move |delivery| {
            key_requests::record(&delivery.data, &requests_registry, &requests_accepted);
            let channel = requests_channel.clone();
            async move {
                channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                    .await
            }
        },
    ));
    let expired = consume(&connection, EXPIRED_QUEUE).await?;
    let expired_channel = expired.0.clone();
    tasks.spawn(consume_loop(
        "expired",
        expired.1,
        loops.clone(),
        move |delivery| {
            tracing::debug!(
                bytes = delivery.data.len(),
                "an expired command was dead-lettered"
            );
            let channel = expired_channel.clone();
            async move {
                channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                    .await
            }
        },
    ));

    let lost = tokio::select! {
        () = shutdown => false,
        () = loops.cancelled() => true,
    };
    loops.cancel();
    if lost {
        anyhow::bail!(
            "lost the connection to the broker at {url}; stopping so a supervisor restarts the master"
        );
    }
    tracing::info!("shutting down");
    if !steps.finish_steps(STEP_GRACE).await {
        tracing::warn!(
            "jobs still being started after {}; closing anyway",
            humantime::format_duration(STEP_GRACE)
        );
    }
    dispatch_common::client::close(&connection, "master shutting down").await;
    Ok(())
}

/// A channel with a prefetch and a consumer on `queue`.
async fn consume(
    connection: &lapin::Connection,
    queue: &str,
) -> lapin::Result<(Channel, Consumer)> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            format!("master.{queue}").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Hands every delivery of `consumer` to `handle` until `stop`, the consumer ends or a
/// handler fails; a failure cancels `stop` for the whole daemon.
async fn consume_loop<F, Fut>(
    what: &str,
    mut consumer: Consumer,
    stop: CancellationToken,
    handle: F,
) where
    F: Fn(lapin::message::Delivery) -> Fut,
    Fut: Future<Output = lapin::Result<()>>,
{
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => return,
            next = consumer.next() => next,
        };
        let outcome = match delivery {
            Some(Ok(delivery)) => handle(delivery).await,
            Some(Err(e)) => Err(e),
            None => break,
        };
        if let Err(e) = outcome {
            tracing::error!("{what}: {e}");
            break;
        }
    }
    stop.cancel();
}

/// Prunes old jobs at start and then every [`PRUNE_EVERY`].
async fn prune_loop(history: Arc<History>, keep: Duration, stop: CancellationToken) {
    loop {
        history.prune(keep).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

async fn declare_loop(channel: Channel, accepted: Arc<Accepted>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = accepted.notify.notified() => {}
        }
        for record in accepted.take() {
            if let Err(e) = topology::declare_minion(&channel, &record).await {
                tracing::error!(id = %record.id, "declaring the queue of an accepted key: {e}");
                stop.cancel();
                return;
            }
        }
    }
}
