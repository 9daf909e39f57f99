//! A connection's writer task: finishes writing what the socket did not take at once
//! (see [`crate::outbox`]), resumes deliveries held back while the outbox was full, and
//! sends a heartbeat when nothing has been written for half the heartbeat timeout.

use crate::broker::Broker;
use crate::codec::frame::put_heartbeat;
use crate::outbox::{Outbox, batch};
use crate::queue::ConnId;
use std::sync::Arc;
use std::time::Duration;

/// Runs until the outbox is closed and flushed, or the socket fails.
pub async fn run(
    outbox: Arc<Outbox>,
    heartbeat: Option<Duration>,
    broker: Arc<Broker>,
    conn: ConnId,
) {
    let mut written_at_last_beat = outbox.written();
    loop {
        if let Err(e) = outbox.drain().await {
            tracing::debug!(conn, error = %e, "write failed; closing the connection");
            outbox.close();
            return;
        }
        if outbox.take_starved() {
            batch(|| broker.vhost.lock().resume_connection(conn));
            continue;
        }
        if outbox.is_closed() {
            return;
        }
        match heartbeat {
            Some(every) => {
                if tokio::time::timeout(every, outbox.wait_for_work())
                    .await
                    .is_err()
                {
                    let written = outbox.written();
                    if written == written_at_last_beat && outbox.is_empty() {
                        outbox.push(put_heartbeat);
                    }
                    written_at_last_beat = outbox.written();
                }
            }
            None => outbox.wait_for_work().await,
        }
    }
}
