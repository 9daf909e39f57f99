//! The disk alarm: when free space under the data directory falls below
//! `--disk-free-limit` (50 MB by default, as RabbitMQ), publishing connections are blocked
//! (`connection.blocked`) until space is freed, so a filling disk stops publishers before
//! writes fail. Checked at start and every [`DISK_FREE_POLL`]; without a data directory,
//! or with a limit of 0, there is nothing to check.

use crate::broker::Broker;
use crate::config::DISK_FREE_POLL;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Bytes available to the broker on the file system holding `dir`.
fn free_bytes(dir: &Path) -> nix::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

/// Measures free space once and sets or clears the alarm, logging each change. When
/// free space cannot be read, the alarm is cleared (nothing is known to be low) and the
/// error returned.
pub fn check(broker: &Broker) -> nix::Result<()> {
    let limit = broker.config.disk_free_limit;
    let Some(dir) = broker.config.data_dir.as_deref().filter(|_| limit > 0) else {
        return Ok(());
    };
    let free = free_bytes(dir).inspect_err(|_| {
        if broker.set_disk_alarm(false) {
            tracing::info!("disk alarm cleared: free space cannot be read");
        }
    })?;
    let low = free < limit;
    let was = broker.set_disk_alarm(low);
    if low && !was {
        tracing::warn!(
            free,
            limit,
            "disk alarm: free space under {} is below --disk-free-limit; publishers are blocked until space is freed",
            dir.display()
        );
    } else if was && !low {
        tracing::info!(free, limit, "disk alarm cleared; publishers may go on");
    }
    Ok(())
}

/// [`check`], saying once (until it works again) that free space cannot be read.
fn check_and_report(broker: &Broker, failing: &mut bool) {
    match check(broker) {
        Ok(()) => *failing = false,
        Err(e) if !*failing => {
            *failing = true;
            let dir = broker.config.data_dir.as_deref().unwrap_or(Path::new("?"));
            tracing::warn!(
                "cannot read the free space under {}: {e}; the disk alarm is off until it can",
                dir.display()
            );
        }
        Err(_) => {}
    }
}

/// Checks every [`DISK_FREE_POLL`] until `stop` is cancelled.
pub async fn run(broker: Arc<Broker>, stop: CancellationToken) {
    if broker.config.data_dir.is_none() || broker.config.disk_free_limit == 0 {
        return;
    }
    let mut failing = false;
    check_and_report(&broker, &mut failing);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(DISK_FREE_POLL) => check_and_report(&broker, &mut failing),
        }
    }
}
