//! A connection's writer task: drains the outbox into the socket, one `write` for
//! everything queued, and sends heartbeats when the connection has been quiet.

use crate::broker::Broker;
use crate::codec::frame::put_heartbeat;
use crate::outbox::Outbox;
use crate::queue::ConnId;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

/// Buffers larger than this are not kept for reuse once written.
const KEEP_BUFFER: usize = 256 * 1024;

/// Runs until the outbox is closed and flushed, or the socket fails.
pub async fn run(
    mut socket: OwnedWriteHalf,
    outbox: Arc<Outbox>,
    heartbeat: Option<Duration>,
    broker: Arc<Broker>,
    conn: ConnId,
) {
    let mut pending = Vec::new();
    loop {
        outbox.take_into(&mut pending);
        if pending.is_empty() {
            if outbox.is_closed() {
                break;
            }
            match heartbeat {
                Some(every) => {
                    if tokio::time::timeout(every, outbox.wait_for_output())
                        .await
                        .is_err()
                    {
                        put_heartbeat(&mut pending);
                    }
                }
                None => outbox.wait_for_output().await,
            }
            if pending.is_empty() {
                continue;
            }
        }
        if let Err(e) = socket.write_all(&pending).await {
            tracing::debug!(conn, error = %e, "write failed; closing the connection");
            outbox.close();
            break;
        }
        pending.clear();
        if pending.capacity() > KEEP_BUFFER {
            pending = Vec::new();
        }
        outbox.notify_drained();
        if outbox.take_starved() {
            broker.vhost.lock().resume_connection(conn);
        }
    }
    let _ = socket.shutdown().await;
}
