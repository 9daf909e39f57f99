//! The master's background tasks (answers to requests, wait timers, watchers, delayed
//! firings): each one is tracked by the daemon's task tracker and ends when the daemon
//! stops, so shutdown waits for them and none outlives it.

use std::future::Future;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns tracked tasks that stop with the daemon.
#[derive(Debug, Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    pub fn new(tracker: TaskTracker, stop: CancellationToken) -> Self {
        Self { tracker, stop }
    }

    /// Runs `task` in the background until it ends or the daemon stops.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
    }
}
