//! Minion replies from [`RESULTS_QUEUE`](dispatch_common::names::RESULTS_QUEUE).
//!
//! A reply counts only when it is signed, under the reply domain, by the accepted key of
//! the minion it names; anything else is dropped with a warning. A verified reply goes
//! to the job engine (recorded, then streamed to the waiting caller) and is published on
//! the events exchange as `job.<jid>.<minion>` (the envelope as the minion signed it, so
//! watchers can check it too).

use crate::authority::SharedRegistry;
use crate::jobs::Jobs;
use dispatch_common::envelope::{Envelope, domain};
use dispatch_common::message::Reply;
use dispatch_common::names::{EVENTS_EXCHANGE, job_event_key};
use dispatch_common::rpc::Role;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel, message::Delivery};
use std::sync::Arc;

/// Checks a reply envelope against the registry.
pub fn verify_reply(bytes: &[u8], registry: &SharedRegistry) -> Result<Reply, String> {
    let envelope = Envelope::decode(bytes).map_err(|e| e.to_string())?;
    let key = registry
        .lock()
        .accepted_key(&envelope.signer, Role::Minion)
        .ok_or_else(|| {
            format!(
                "reply from '{}', which is not an accepted minion",
                envelope.signer
            )
        })?;
    let reply: Reply = envelope
        .open(domain::REPLY, &key)
        .map_err(|e| format!("reply from '{}': {e}", envelope.signer))?;
    if reply.minion != envelope.signer {
        return Err(format!(
            "reply signed by '{}' claims to come from '{}'",
            envelope.signer, reply.minion
        ));
    }
    Ok(reply)
}

/// Handles one delivery from the results queue and acks it.
pub async fn handle(delivery: Delivery, jobs: &Arc<Jobs>, channel: &Channel) -> lapin::Result<()> {
    match verify_reply(&delivery.data, &jobs.registry) {
        Ok(reply) => {
            tracing::info!(job = %reply.job_id, minion = %reply.minion, "return");
            let (job_id, minion) = (reply.job_id, reply.minion.clone());
            jobs.on_return(reply).await;
            channel
                .basic_publish(
                    EVENTS_EXCHANGE.into(),
                    job_event_key(&job_id, &minion).into(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    BasicProperties::default(),
                )
                .await?;
        }
        Err(reason) => tracing::warn!("dropped a reply: {reason}"),
    }
    channel
        .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
        .await
}
