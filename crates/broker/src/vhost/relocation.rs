//! The vhost's side of message log compaction: listing the live messages of a segment
//! the store wants emptied (see [`crate::store::compaction`]).

use super::State;
use crate::broker::Broker;
use crate::store::{Store, unpack_location};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs the vhost's side of compaction when the store asks and nothing else takes the
/// vhost lock (any operation's end does it otherwise); until `stop` is cancelled.
pub async fn run(broker: Arc<Broker>, stop: CancellationToken) {
    let Some(store) = broker.store.clone() else {
        return;
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = store.compaction_requested() => {}
        }
        // Releasing the lock runs `finish_operation`, which hands the segment over.
        drop(broker.vhost.lock());
    }
}

impl State {
    /// Hands the store every message whose record is in `segment`, with the durable
    /// queues that hold it (waiting, or delivered and unacknowledged) and whether each
    /// delivered it; then marks the segment done. Runs under the vhost lock, so no
    /// operation slips between the listing and the copies.
    pub(super) fn relocate_segment(&self, store: &Store, segment: u64) {
        let mut found: BTreeMap<u64, (u64, Vec<(u64, bool)>)> = BTreeMap::new();
        store.with_locator(|locate| {
            let mut note = |id: u64, location: u64, queue: u64, delivered: bool| {
                let location = locate(id, location);
                if unpack_location(location).0 == segment {
                    let (_, queues) = found.entry(id).or_insert((location, Vec::new()));
                    queues.push((queue, delivered));
                }
            };
            for q in self.queues.values().filter(|q| q.is_persisted()) {
                for (id, location, redelivered) in q.stored_entries() {
                    note(id, location, q.id, redelivered);
                }
            }
            for unacked in self.channels.values().flat_map(|ch| &ch.unacked) {
                let msg = &unacked.msg;
                if let (true, Some(id), Some(location)) =
                    (unacked.stored, msg.stored(), msg.location())
                {
                    note(id, location, unacked.queue_id, true);
                }
            }
        });
        let messages = found.len();
        for (id, (location, queues)) in found {
            store.relocate(id, location, queues);
        }
        store.relocated(segment);
        tracing::debug!(segment, messages, "compacting a message log segment");
    }
}
