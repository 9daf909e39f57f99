//! The master's background tasks (answers to requests, wait timers, watchers, delayed
//! firings): each one is tracked by the daemon's task tracker and ends when the daemon
//! stops, so shutdown waits for them and none outlives it.
//!
//! A few are steps that must not be cut in half (starting a job: it is recorded, then
//! published, and a rolling batch recorded before its first publish). Those run to their
//! end even once the daemon stops, and the daemon waits for them, at most
//! [`STEP_GRACE`], before it closes its broker connection.

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a stopping master waits for the steps under way.
pub const STEP_GRACE: Duration = Duration::from_secs(5);

/// Spawns tracked tasks that stop with the daemon, and steps that finish first.
#[derive(Debug, Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    steps: TaskTracker,
}

impl Tasks {
    pub fn new(tracker: TaskTracker, stop: CancellationToken) -> Self {
        Self {
            tracker,
            stop,
            steps: TaskTracker::new(),
        }
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

    /// Runs `step` in the background to its end, even once the daemon stops; see the
    /// module doc.
    pub fn spawn_step(&self, step: impl Future<Output = ()> + Send + 'static) {
        self.steps.spawn(step);
    }

    /// Waits, at most `grace`, for the steps under way to end; false if some did not.
    pub async fn finish_steps(&self, grace: Duration) -> bool {
        self.steps.close();
        tokio::time::timeout(grace, self.steps.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn a_step_runs_to_its_end_after_the_stop_and_is_waited_for() {
        let stop = CancellationToken::new();
        let tasks = Tasks::new(TaskTracker::new(), stop.clone());
        let (go, gate) = oneshot::channel::<()>();
        let (done, finished) = oneshot::channel::<()>();
        tasks.spawn_step(async move {
            let _ = gate.await;
            let _ = done.send(());
        });
        let (_kept, background) = oneshot::channel::<()>();
        let (ended, background_ended) = oneshot::channel::<()>();
        tasks.spawn(async move {
            let _ = background.await;
            let _ = ended.send(());
        });
        stop.cancel();
        let ended = tokio::time::timeout(STEP_GRACE, background_ended).await;
        assert!(
            matches!(ended, Ok(Err(_))),
            "a background task is dropped at the stop"
        );
        let finishing = tokio::spawn({
            let tasks = tasks.clone();
            async move { tasks.finish_steps(STEP_GRACE).await }
        });
        go.send(()).unwrap();
        assert!(finishing.await.unwrap(), "the step ended within the grace");
        assert!(finished.await.is_ok(), "and ran to its end");
    }
}
