//! Names of dispatch's own things: the grammar of minion ids and groups, and the AMQP
//! topology (exchanges, queues, binding keys, queue arguments) every process agrees on.
//!
//! Ids and groups are checked with [`check_name`] wherever they enter (command line,
//! SASL proof, signed messages, RPC requests), so no `*`, `#`, `/` or `..` can ever reach
//! a binding key or a file name.

/// Longest id or group, in bytes (an AMQP short string).
pub const MAX_NAME_LEN: usize = 255;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {kind} '{name}': {reason}; use dot-separated segments of lowercase letters, \
     digits, '-' and '_', each starting with a letter or digit (e.g. web.01)"
)]
pub struct NameError {
    pub kind: &'static str,
    pub name: String,
    pub reason: &'static str,
}

/// Checks `name` (an id or group; `kind` says which, for the message) against the
/// grammar: dot-separated segments of `[a-z0-9][a-z0-9_-]*`, at most 255 bytes.
pub fn check_name(kind: &'static str, name: &str) -> Result<(), NameError> {
    let refuse = |reason| {
        Err(NameError {
            kind,
            name: name.chars().take(64).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return refuse("it is longer than 255 bytes");
    }
    for segment in name.split('.') {
        let mut bytes = segment.bytes();
        match bytes.next() {
            None => return refuse("it has an empty segment"),
            Some(b) if !(b.is_ascii_lowercase() || b.is_ascii_digit()) => {
                return refuse("a segment starts with something other than a-z or 0-9");
            }
            Some(_) => {}
        }
        if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            return refuse("it contains a character outside a-z, 0-9, '-', '_' and '.'");
        }
    }
    Ok(())
}

/// Topic exchange master → minions. Minion queues are bound with
/// [`minion_binding`], [`group_binding`] for each group, and [`ALL_BINDING`].
pub const COMMANDS_EXCHANGE: &str = "dispatch.commands";
/// Durable queue the minions reply to; the master consumes it.
pub const RESULTS_QUEUE: &str = "dispatch.results";
/// The master's request/response queue (CLI and other clients).
pub const MASTER_RPC_QUEUE: &str = "dispatch.master.rpc";
/// Durable queue of key requests: how minions on an external broker (where the master
/// sees no login) ask to be accepted. The master consumes it.
pub const KEY_REQUESTS_QUEUE: &str = "dispatch.master.keys";
/// Topic exchange of job and minion events, for watchers.
pub const EVENTS_EXCHANGE: &str = "dispatch.events";
/// Fanout exchange that expired commands are dead-lettered to.
pub const EXPIRED_EXCHANGE: &str = "dispatch.expired";
/// Durable queue bound to [`EXPIRED_EXCHANGE`]; the master consumes it.
pub const EXPIRED_QUEUE: &str = "dispatch.expired";
/// Binding key every minion queue has.
pub const ALL_BINDING: &str = "all";

/// Commands a minion queue holds while the minion is away; further publishes are
/// refused (`x-overflow: reject-publish`), so the master learns the queue is full.
pub const MINION_QUEUE_MAX_LENGTH: i64 = 10_000;
/// `x-overflow` of minion queues.
pub const MINION_QUEUE_OVERFLOW: &str = "reject-publish";

/// The store-and-forward queue of minion `id`.
pub fn minion_queue(id: &str) -> String {
    format!("dispatch.minion.{id}")
}

/// The binding key that addresses minion `id` alone.
pub fn minion_binding(id: &str) -> String {
    format!("minion.{id}")
}

/// The binding key that addresses every minion of `group`.
pub fn group_binding(group: &str) -> String {
    format!("group.{group}")
}

/// Routing key of the event a minion's return raises: `job.<jid>.<minion>`.
pub fn job_event_key(job_id: &uuid::Uuid, minion: &str) -> String {
    format!("job.{}.{minion}", job_id.simple())
}

/// Routing key of the event the master raises when it publishes job `job_id`:
/// `job.<jid>` (a return is `job.<jid>.<minion>`).
pub fn job_new_event_key(job_id: &uuid::Uuid) -> String {
    format!("job.{}", job_id.simple())
}

/// Routing-key prefix of the events minion `id` may publish: `minion.<id>.`.
pub fn minion_event_prefix(id: &str) -> String {
    format!("minion.{id}.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_ids_pass() {
        for ok in ["web.01", "db.eu.2", "a", "x_y-z.0", "operator.local"] {
            assert_eq!(check_name("id", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn wildcards_slashes_and_empty_segments_are_refused() {
        for bad in [
            "", "web.*", "db.#", "a/b", "..", "a..b", ".a", "a.", "Web", "-a", "a b", "é",
        ] {
            assert!(check_name("id", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("id", &"a".repeat(256)).is_err());
        assert!(check_name("id", &"a".repeat(255)).is_ok());
    }

    #[test]
    fn the_error_says_what_to_do() {
        let err = check_name("group", "Web").unwrap_err().to_string();
        assert!(
            err.contains("invalid group 'Web'") && err.contains("e.g. web.01"),
            "{err}"
        );
    }
}
