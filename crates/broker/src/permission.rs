//! Per-identity permissions: one check per operation, called by the channel handlers
//! (`crate::channel`) after they have resolved the queue a method means and before
//! they touch the vhost.
//!
//! [`Permissions::Full`] allows everything and costs one enum match. A
//! [`Permissions::Minion`] may only read its own queue and publish replies and its own
//! events (see [`Permissions`]); everything else is a channel error 403 ACCESS_REFUSED
//! worded as RabbitMQ words it, so the channel closes and the connection stays up.

use crate::error::AmqpError;
use crate::identity::Permissions;
use dispatch_common::names;
use std::fmt;

/// The name RabbitMQ uses for the default exchange `""` in its messages.
const DEFAULT_EXCHANGE_NAME: &str = "amq.default";

/// `queue.declare`; `queue` is empty for a server-named queue.
pub fn declare_queue(perm: &Permissions, queue: &str, passive: bool) -> Result<(), AmqpError> {
    match perm {
        Permissions::Full => Ok(()),
        Permissions::Minion { id } if passive && is_own_queue(id, queue) => Ok(()),
        Permissions::Minion { id } if queue.is_empty() => Err(refused(id, "a server-named queue")),
        Permissions::Minion { id } => Err(refused(id, Queue(queue))),
    }
}

/// `exchange.declare`.
pub fn declare_exchange(
    perm: &Permissions,
    exchange: &str,
    passive: bool,
) -> Result<(), AmqpError> {
    match perm {
        Permissions::Full => Ok(()),
        Permissions::Minion { .. } if passive && is_publishable(exchange) => Ok(()),
        Permissions::Minion { id } => Err(refused(id, Exchange(exchange))),
    }
}

/// `exchange.delete`.
pub fn delete_exchange(perm: &Permissions, exchange: &str) -> Result<(), AmqpError> {
    modify_exchange(perm, exchange)
}

/// `exchange.bind` and `exchange.unbind`.
pub fn bind_exchange(perm: &Permissions, destination: &str) -> Result<(), AmqpError> {
    modify_exchange(perm, destination)
}

/// `queue.bind` and `queue.unbind`.
pub fn bind_queue(perm: &Permissions, queue: &str) -> Result<(), AmqpError> {
    modify_queue(perm, queue)
}

/// `queue.purge`.
pub fn purge_queue(perm: &Permissions, queue: &str) -> Result<(), AmqpError> {
    modify_queue(perm, queue)
}

/// `queue.delete`.
pub fn delete_queue(perm: &Permissions, queue: &str) -> Result<(), AmqpError> {
    modify_queue(perm, queue)
}

/// `basic.consume`.
pub fn consume(perm: &Permissions, queue: &str) -> Result<(), AmqpError> {
    read_queue(perm, queue)
}

/// `basic.get`.
pub fn get(perm: &Permissions, queue: &str) -> Result<(), AmqpError> {
    read_queue(perm, queue)
}

/// `basic.publish`, from its method frame (before any content is buffered).
#[inline]
pub fn publish(perm: &Permissions, exchange: &str, routing_key: &str) -> Result<(), AmqpError> {
    match perm {
        Permissions::Full => Ok(()),
        Permissions::Minion { id } => minion_publish(id, exchange, routing_key),
    }
}

/// The `CC`/`BCC` routing keys of a published message, which route it as its own key
/// does.
pub fn publish_cc(perm: &Permissions, exchange: &str, keys: &[String]) -> Result<(), AmqpError> {
    match perm {
        Permissions::Full => Ok(()),
        Permissions::Minion { id } => keys
            .iter()
            .try_for_each(|key| minion_publish(id, exchange, key)),
    }
}

fn modify_exchange(perm: &Permissions, exchange: &str) -> Result<(), AmqpError> {
    match perm {
        Permissions::Full => Ok(()),
        Permissions::Minion { id } => Err(refused(id, Exchange(exchange))),
    }
}

fn modify_queue(perm: &Permissions, queue: &str) -> Result<(), AmqpError> {
    match perm {
        Permissions::Full => Ok(()),
        Permissions::Minion { id } => Err(refused(id, Queue(queue))),
    }
}

fn read_queue(perm: &Permissions, queue: &str) -> Result<(), AmqpError> {
    match perm {
        Permissions::Full => Ok(()),
        Permissions::Minion { id } if is_own_queue(id, queue) => Ok(()),
        Permissions::Minion { id } => Err(refused(id, Queue(queue))),
    }
}

fn minion_publish(id: &str, exchange: &str, routing_key: &str) -> Result<(), AmqpError> {
    let allowed = match exchange {
        "" => routing_key == names::RESULTS_QUEUE,
        names::EVENTS_EXCHANGE => is_own_event(id, routing_key),
        _ => return Err(refused(id, Exchange(exchange))),
    };
    if allowed {
        Ok(())
    } else {
        Err(refused(id, RoutingKey(exchange, routing_key)))
    }
}

/// `minion.<id>.<event>` with `<event>` one non-empty word. Ids may contain dots, so a
/// bare prefix test would let minion `web` publish `minion.web.01.up`, an event of
/// minion `web.01`.
fn is_own_event(id: &str, routing_key: &str) -> bool {
    routing_key
        .strip_prefix(names::minion_event_prefix(id).as_str())
        .is_some_and(|event| !event.is_empty() && !event.contains('.'))
}

fn is_own_queue(id: &str, queue: &str) -> bool {
    queue == names::minion_queue(id)
}

/// The exchanges a minion publishes to, which it may also declare passively.
fn is_publishable(exchange: &str) -> bool {
    exchange.is_empty() || exchange == names::EVENTS_EXCHANGE
}

fn refused(user: &str, what: impl fmt::Display) -> AmqpError {
    AmqpError::access_refused(format!(
        "access to {what} in vhost '/' refused for user '{user}'"
    ))
}

struct Queue<'a>(&'a str);

impl fmt::Display for Queue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "queue '{}'", self.0)
    }
}

struct Exchange<'a>(&'a str);

impl fmt::Display for Exchange<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            "" => write!(f, "exchange '{DEFAULT_EXCHANGE_NAME}'"),
            name => write!(f, "exchange '{name}'"),
        }
    }
}

/// A routing key on an exchange the user may publish to with other keys.
struct RoutingKey<'a>(&'a str, &'a str);

impl fmt::Display for RoutingKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "routing key '{}' of {}", self.1, Exchange(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code::ACCESS_REFUSED;

    fn minion() -> Permissions {
        Permissions::Minion {
            id: "web.01".into(),
        }
    }

    #[test]
    fn full_permissions_allow_everything() {
        let full = Permissions::Full;
        assert!(declare_queue(&full, "", false).is_ok());
        assert!(declare_exchange(&full, "x", false).is_ok());
        assert!(bind_queue(&full, "q").is_ok());
        assert!(consume(&full, "dispatch.minion.db.01").is_ok());
        assert!(publish(&full, names::COMMANDS_EXCHANGE, "all").is_ok());
    }

    #[test]
    fn a_minion_reads_only_its_own_queue() {
        let own = names::minion_queue("web.01");
        assert!(consume(&minion(), &own).is_ok());
        assert!(get(&minion(), &own).is_ok());
        assert!(declare_queue(&minion(), &own, true).is_ok());
        let err = consume(&minion(), &names::minion_queue("db.01")).unwrap_err();
        assert_eq!(err.code, ACCESS_REFUSED);
        assert_eq!(
            err.text,
            "ACCESS_REFUSED - access to queue 'dispatch.minion.db.01' in vhost '/' refused for user 'web.01'"
        );
        assert!(declare_queue(&minion(), &own, false).is_err());
        assert!(declare_queue(&minion(), "", false).is_err());
        assert!(purge_queue(&minion(), &own).is_err());
        assert!(delete_queue(&minion(), &own).is_err());
        assert!(bind_queue(&minion(), &own).is_err());
    }

    #[test]
    fn a_minion_publishes_only_replies_and_its_own_events() {
        assert!(publish(&minion(), "", names::RESULTS_QUEUE).is_ok());
        let up = format!("{}up", names::minion_event_prefix("web.01"));
        assert!(publish(&minion(), names::EVENTS_EXCHANGE, &up).is_ok());
        let other = format!("{}up", names::minion_event_prefix("db.01"));
        let err = publish(&minion(), names::EVENTS_EXCHANGE, &other).unwrap_err();
        assert!(
            err.text
                .contains("routing key 'minion.db.01.up' of exchange 'dispatch.events'")
        );
        let err = publish(&minion(), "", "dispatch.minion.db.01").unwrap_err();
        assert!(err.text.contains("exchange 'amq.default'"), "{}", err.text);
        assert!(publish(&minion(), names::COMMANDS_EXCHANGE, "all").is_err());
        let cc = ["dispatch.minion.db.01".to_owned()];
        assert!(publish_cc(&minion(), "", &cc).is_err());
        assert!(publish_cc(&Permissions::Full, "", &cc).is_ok());
        assert!(declare_exchange(&minion(), names::EVENTS_EXCHANGE, true).is_ok());
        assert!(declare_exchange(&minion(), names::EVENTS_EXCHANGE, false).is_err());
        assert!(declare_exchange(&minion(), names::COMMANDS_EXCHANGE, true).is_err());
        assert!(delete_exchange(&minion(), names::EVENTS_EXCHANGE).is_err());
    }

    #[test]
    fn a_minion_whose_id_prefixes_another_cannot_publish_its_events() {
        let web = Permissions::Minion { id: "web".into() };
        let events = names::EVENTS_EXCHANGE;
        assert!(publish(&web, events, "minion.web.up").is_ok());
        let err = publish(&web, events, "minion.web.01.up").unwrap_err();
        assert_eq!(err.code, ACCESS_REFUSED);
        assert!(
            err.text.contains("routing key 'minion.web.01.up'"),
            "{}",
            err.text
        );
        for key in [
            "minion.web.",
            "minion.web",
            "minion.webx.up",
            "minion.web..up",
        ] {
            assert!(publish(&web, events, key).is_err(), "{key}");
        }
        let cc = ["minion.web.01.down".to_owned()];
        assert!(publish_cc(&web, events, &cc).is_err());
        // A dotted id publishes one-word events under its whole id.
        assert!(publish(&minion(), events, "minion.web.01.up").is_ok());
        assert!(publish(&minion(), events, "minion.web.01.up.again").is_err());
    }
}
