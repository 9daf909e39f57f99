//! The accept loop: bounded connections, accept errors retried with backoff, and a
//! graceful shutdown that closes every connection with 320 CONNECTION_FORCED and waits
//! for their tasks.

use crate::broker::Broker;
use crate::connection;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest pause between retries of a failing `accept` (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves AMQP on `listener` until `shutdown` completes, then closes every client
/// connection (320 CONNECTION_FORCED), waits for their tasks and flushes the store.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, shutdown: impl Future<Output = ()>) {
    let limit = Arc::new(Semaphore::new(broker.config.max_connections));
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(crate::expiry::run(broker.clone(), stop.child_token()));
    tasks.spawn(crate::disk_alarm::run(broker.clone(), stop.child_token()));
    tasks.spawn(crate::vhost::relocation::run(
        broker.clone(),
        stop.child_token(),
    ));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener) => accepted,
        };
        let (broker, stop) = (broker.clone(), stop.child_token());
        tasks.spawn(async move {
            connection::serve(stream, peer, broker, stop).await;
            drop(permit);
        });
    }
    tracing::info!(connections = tasks.len(), "shutting down");
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    broker.close();
}

/// Accepts the next connection, retrying transient errors with capped backoff.
async fn accept(listener: &TcpListener) -> (TcpStream, std::net::SocketAddr) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}
