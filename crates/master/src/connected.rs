//! Which minions are connected now: those consuming their command queue, as the broker
//! sees it (an announcement on the events exchange can be stale, a consumer cannot).
//!
//! The embedded broker answers in process, for every minion of a run under one lock: no
//! round trip however large the fleet. An external broker (RabbitMQ) is asked with one
//! passive `queue.declare` per minion, spread over [`PROBE_CHANNELS`] channels in
//! parallel; a broker error counts as not connected.

use crate::topology;
use dispatch_broker::Broker;
use dispatch_common::names::minion_queue;
use lapin::{Channel, Connection};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::Mutex;

/// Channels that ask an external broker, in parallel, which minions are connected.
pub const PROBE_CHANNELS: usize = 4;

/// Where the answer comes from; see the module doc.
pub enum Connected {
    /// The embedded broker, asked in process.
    Embedded(Arc<Broker>),
    /// An external broker, asked over AMQP.
    External {
        /// Each is reopened after a failed passive declare (which closes it).
        probes: Vec<Arc<Mutex<Channel>>>,
        connection: Arc<Connection>,
    },
}

impl Connected {
    /// Asks `broker` when the master embeds it, else the broker behind `connection`.
    pub async fn open(
        broker: Option<Arc<Broker>>,
        connection: &Arc<Connection>,
    ) -> lapin::Result<Self> {
        if let Some(broker) = broker {
            return Ok(Connected::Embedded(broker));
        }
        let mut probes = Vec::with_capacity(PROBE_CHANNELS);
        for _ in 0..PROBE_CHANNELS {
            probes.push(Arc::new(Mutex::new(connection.create_channel().await?)));
        }
        Ok(Connected::External {
            probes,
            connection: connection.clone(),
        })
    }

    /// Which of `ids` consume their queue now.
    pub async fn among(&self, ids: &[String]) -> HashSet<String> {
        match self {
            Connected::Embedded(broker) => {
                let queues: Vec<String> = ids.iter().map(|id| minion_queue(id)).collect();
                let vhost = broker.vhost.lock();
                ids.iter()
                    .zip(&queues)
                    .filter(|(_, queue)| vhost.has_consumers(queue))
                    .map(|(id, _)| id.clone())
                    .collect()
            }
            Connected::External { probes, connection } => {
                probe_in_parallel(probes, connection, ids).await
            }
        }
    }
}

async fn probe_in_parallel(
    probes: &[Arc<Mutex<Channel>>],
    connection: &Arc<Connection>,
    ids: &[String],
) -> HashSet<String> {
    let mut tasks = tokio::task::JoinSet::new();
    let chunk = ids.len().div_ceil(probes.len()).max(1);
    for (ids, probe) in ids.chunks(chunk).zip(probes) {
        let (ids, probe, connection) = (ids.to_vec(), probe.clone(), connection.clone());
        tasks.spawn(async move {
            let mut channel = probe.lock().await;
            let mut up = Vec::new();
            for id in ids {
                match topology::is_consuming(&channel, &id).await {
                    Ok(true) => up.push(id),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(%id, "cannot ask the broker whether the minion is connected: {e}");
                        // A failed passive declare closes the channel: open another.
                        if let Ok(fresh) = connection.create_channel().await {
                            *channel = fresh;
                        }
                    }
                }
            }
            up
        });
    }
    let mut connected = HashSet::new();
    while let Some(done) = tasks.join_next().await {
        connected.extend(done.unwrap_or_default());
    }
    connected
}
