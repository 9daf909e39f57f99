//! Dead-lettering: the copy of a message that died in a queue (rejected without requeue,
//! expired, or pushed out by a length limit) and is republished to the queue's
//! `x-dead-letter-exchange`.
//!
//! The copy is what RabbitMQ 3.10 makes (`rabbit_dead_letter:make_msg/5`):
//!
//! - its exchange is the dead-letter exchange; its routing keys are
//!   `x-dead-letter-routing-key` when set (and then its `CC` header is removed), else its
//!   own routing key and `CC` keys;
//! - an `x-death` header, an array of tables, most recent death first, each with `count`,
//!   `reason` (`rejected`, `expired`, `maxlen`), `queue`, `time`, `exchange`,
//!   `routing-keys` and, when the message had a per-message TTL, `original-expiration`.
//!   A second death in the same queue for the same reason increments that entry's
//!   `count` and moves it to the front (its other fields keep the first death's values);
//! - `x-first-death-reason`, `-queue` and `-exchange` headers, set by the first death;
//! - no `expiration` property: a dead letter does not expire again for the same TTL.
//!
//! The body `Bytes` are shared with the original; only the content header is re-encoded.
//!
//! Cycles: a dead letter is not delivered to a queue it already died in unless a client
//! rejected it somewhere on the way ([`is_cycle`], RabbitMQ's `detect_cycles/3`); dead
//! letters for reason `rejected` are never considered cycling.

use crate::arguments::DeadLetterTarget;
use crate::codec::content::{rewrite_properties, routing_keys};
use crate::message::Message;
use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use std::sync::Arc;

/// The `x-death` header and its fields.
pub const X_DEATH: &str = "x-death";
const X_FIRST_DEATH_REASON: &str = "x-first-death-reason";
const X_FIRST_DEATH_QUEUE: &str = "x-first-death-queue";
const X_FIRST_DEATH_EXCHANGE: &str = "x-first-death-exchange";
const COUNT: &str = "count";
const REASON: &str = "reason";
const QUEUE: &str = "queue";
const TIME: &str = "time";
const EXCHANGE: &str = "exchange";
const ROUTING_KEYS: &str = "routing-keys";
const ORIGINAL_EXPIRATION: &str = "original-expiration";

/// Why a message died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `basic.reject` or `basic.nack` with `requeue = false`.
    Rejected,
    /// Its TTL ran out at the head of the queue.
    Expired,
    /// A length limit dropped it (`drop-head`) or refused it (`reject-publish-dlx`).
    MaxLen,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::MaxLen => "maxlen",
        }
    }
}

/// A message that died in `queue` and waits to be republished to `target`.
#[derive(Debug)]
pub struct DeadLetter {
    pub msg: Arc<Message>,
    pub reason: Reason,
    pub queue: Arc<str>,
    pub target: DeadLetterTarget,
}

/// The dead-lettered copy, ready to be routed.
#[derive(Debug)]
pub struct Republish {
    pub msg: Arc<Message>,
    /// Routing keys besides the message's own (its `CC` keys).
    pub extra_keys: Vec<String>,
    /// The copy's headers, for headers exchanges and cycle detection.
    pub headers: FieldTable,
}

fn longstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn as_str(value: Option<&AMQPValue>) -> Option<&[u8]> {
    match value? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// Builds the dead-lettered copy of `dead.msg`; `now_secs` is the wall-clock time of
/// death. `None` if the stored header cannot be decoded (it was checked on arrival).
pub fn make_message(dead: &DeadLetter, now_secs: u64) -> Option<Republish> {
    let msg = &dead.msg;
    let mut headers = FieldTable::default();
    let mut cc = Vec::new();
    let header = rewrite_properties(&msg.header, |props| {
        let mut table = props.headers().clone().unwrap_or_default();
        let own_keys: Vec<String> = std::iter::once(msg.routing_key.to_string())
            .chain(routing_keys(&table, "CC"))
            .collect();
        let mut info = FieldTable::default();
        info.insert(REASON.into(), longstr(dead.reason.as_str()));
        info.insert(QUEUE.into(), longstr(&dead.queue));
        info.insert(TIME.into(), AMQPValue::Timestamp(now_secs));
        info.insert(EXCHANGE.into(), longstr(&msg.exchange));
        info.insert(
            ROUTING_KEYS.into(),
            AMQPValue::FieldArray(FieldArray::from(
                own_keys.iter().map(|k| longstr(k)).collect::<Vec<_>>(),
            )),
        );
        if let Some(expiration) = props.expiration() {
            info.insert(ORIGINAL_EXPIRATION.into(), longstr(expiration.as_str()));
        }
        record_death(&mut table, info, dead);
        match &dead.target.routing_key {
            Some(_) => {
                let mut kept = FieldTable::default();
                for (k, v) in table.inner() {
                    if k.as_str() != "CC" {
                        kept.insert(k.clone(), v.clone());
                    }
                }
                table = kept;
            }
            None => cc = own_keys.into_iter().skip(1).collect(),
        }
        headers = table.clone();
        Some(without_expiration(props).with_headers(table))
    })?;
    let routing_key = match &dead.target.routing_key {
        Some(key) => Arc::from(&**key),
        None => msg.routing_key.clone(),
    };
    Some(Republish {
        msg: Arc::new(Message::new(
            dead.target.exchange.clone(),
            routing_key,
            header.into(),
            msg.body.clone(),
            msg.persistent,
        )),
        extra_keys: cc,
        headers,
    })
}

/// Adds a death to the `x-death` header of `table` (RabbitMQ's `update_x_death_header`).
fn record_death(table: &mut FieldTable, mut info: FieldTable, dead: &DeadLetter) {
    let earlier = match table.inner().get(X_DEATH) {
        Some(AMQPValue::FieldArray(deaths)) => Some(deaths.as_slice().to_vec()),
        _ => None,
    };
    let Some(earlier) = earlier else {
        table.insert(X_FIRST_DEATH_REASON.into(), longstr(dead.reason.as_str()));
        table.insert(X_FIRST_DEATH_QUEUE.into(), longstr(&dead.queue));
        table.insert(X_FIRST_DEATH_EXCHANGE.into(), longstr(&dead.msg.exchange));
        info.insert(COUNT.into(), AMQPValue::LongLongInt(1));
        table.insert(
            X_DEATH.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(info)])),
        );
        return;
    };
    let same = |entry: &AMQPValue| match entry {
        AMQPValue::FieldTable(t) => {
            as_str(t.inner().get(QUEUE)) == Some(dead.queue.as_bytes())
                && as_str(t.inner().get(REASON)) == Some(dead.reason.as_str().as_bytes())
        }
        _ => false,
    };
    let (matching, others): (Vec<AMQPValue>, Vec<AMQPValue>) =
        earlier.into_iter().partition(|e| same(e));
    let entry = match matching.into_iter().next() {
        Some(AMQPValue::FieldTable(mut previous)) => {
            let count = match previous.inner().get(COUNT) {
                Some(AMQPValue::LongInt(n)) => AMQPValue::LongInt(n.saturating_add(1)),
                Some(AMQPValue::LongLongInt(n)) => AMQPValue::LongLongInt(n.saturating_add(1)),
                _ => AMQPValue::LongLongInt(1),
            };
            previous.insert(COUNT.into(), count);
            previous
        }
        _ => {
            info.insert(COUNT.into(), AMQPValue::LongLongInt(1));
            info
        }
    };
    let mut deaths = vec![AMQPValue::FieldTable(entry)];
    deaths.extend(others);
    table.insert(
        X_DEATH.into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
}

/// Whether delivering a dead letter with `headers` to `queue` closes a cycle: the queue is
/// in its `x-death` and no death from the most recent one up to that queue's entry was a
/// rejection (so no client took part).
pub fn is_cycle(headers: &FieldTable, queue: &str) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get(X_DEATH) else {
        return false;
    };
    for death in deaths.as_slice() {
        let AMQPValue::FieldTable(t) = death else {
            // Something a client put there: not a fully automatic cycle.
            return false;
        };
        if as_str(t.inner().get(REASON)) == Some(Reason::Rejected.as_str().as_bytes()) {
            return false;
        }
        if as_str(t.inner().get(QUEUE)) == Some(queue.as_bytes()) {
            return true;
        }
    }
    false
}

/// `props` without its `expiration` (AMQPProperties has no way to unset one field).
fn without_expiration(props: AMQPProperties) -> AMQPProperties {
    let mut out = AMQPProperties::default();
    macro_rules! copy {
        ($($get:ident => $set:ident),* $(,)?) => {
            $(if let Some(v) = props.$get().clone() { out = out.$set(v); })*
        };
    }
    copy!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        user_id => with_user_id,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::content::{headers_table, parse_content_header};
    use amq_protocol::protocol::basic::gen_properties;
    use bytes::Bytes;

    fn message(props: AMQPProperties) -> Arc<Message> {
        let mut header = vec![0, 60, 0, 0];
        header.extend_from_slice(&4u64.to_be_bytes());
        let header = cookie_factory::gen_simple(gen_properties(&props), header).unwrap();
        Arc::new(Message::new(
            "ex".into(),
            "rk".into(),
            header.into(),
            Bytes::from_static(b"body"),
            false,
        ))
    }

    fn die(msg: Arc<Message>, reason: Reason, queue: &str, dlrk: Option<&str>) -> Republish {
        let dead = DeadLetter {
            msg,
            reason,
            queue: queue.into(),
            target: DeadLetterTarget {
                exchange: "dlx".into(),
                routing_key: dlrk.map(Into::into),
            },
        };
        make_message(&dead, 1_700_000_000).unwrap()
    }

    fn deaths(headers: &FieldTable) -> Vec<FieldTable> {
        let Some(AMQPValue::FieldArray(a)) = headers.inner().get(X_DEATH) else {
            panic!("no x-death in {headers:?}")
        };
        a.as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_first_death_records_x_death_and_first_death_headers_and_drops_expiration() {
        let msg = message(AMQPProperties::default().with_expiration("500".into()));
        let out = die(msg.clone(), Reason::Expired, "q1", None);
        assert_eq!(&*out.msg.exchange, "dlx");
        assert_eq!(&*out.msg.routing_key, "rk");
        assert_eq!(
            out.msg.body.as_ptr(),
            msg.body.as_ptr(),
            "the body is shared"
        );
        let parsed = parse_content_header(&out.msg.header).unwrap();
        assert_eq!((parsed.body_size, parsed.expiration_ms), (4, None));
        let headers = headers_table(&out.msg.header, parsed.headers.as_ref().unwrap()).unwrap();
        assert_eq!(headers, out.headers);
        let d = deaths(&headers);
        assert_eq!(d.len(), 1);
        let get = |k: &str| d[0].inner().get(k).cloned();
        assert_eq!(get(COUNT), Some(AMQPValue::LongLongInt(1)));
        assert_eq!(get(REASON), Some(longstr("expired")));
        assert_eq!(get(QUEUE), Some(longstr("q1")));
        assert_eq!(get(EXCHANGE), Some(longstr("ex")));
        assert_eq!(get(ORIGINAL_EXPIRATION), Some(longstr("500")));
        assert_eq!(get(TIME), Some(AMQPValue::Timestamp(1_700_000_000)));
        assert_eq!(
            headers.inner().get(X_FIRST_DEATH_QUEUE),
            Some(&longstr("q1"))
        );
    }

    #[test]
    fn a_second_death_for_the_same_queue_and_reason_counts_up_and_moves_first() {
        let first = die(
            message(AMQPProperties::default()),
            Reason::Rejected,
            "a",
            None,
        );
        let second = die(first.msg, Reason::Expired, "b", None);
        let third = die(second.msg, Reason::Rejected, "a", Some("k"));
        let d = deaths(&third.headers);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].inner().get(QUEUE), Some(&longstr("a")));
        assert_eq!(d[0].inner().get(COUNT), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(d[1].inner().get(QUEUE), Some(&longstr("b")));
        assert_eq!(
            third.headers.inner().get(X_FIRST_DEATH_REASON),
            Some(&longstr("rejected"))
        );
        assert_eq!(&*third.msg.routing_key, "k");
    }

    #[test]
    fn cycles_without_a_rejection_are_detected() {
        let once = die(
            message(AMQPProperties::default()),
            Reason::Expired,
            "a",
            None,
        );
        assert!(is_cycle(&once.headers, "a"));
        assert!(!is_cycle(&once.headers, "b"));
        let rejected = die(once.msg, Reason::Rejected, "b", None);
        assert!(
            !is_cycle(&rejected.headers, "a"),
            "a client rejected it in b"
        );
    }
}
