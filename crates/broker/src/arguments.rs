//! The `x-` arguments of `queue.declare` that the broker acts on: their names (the only
//! place they are spelled), their validation and the parsed [`QueueArgs`] a queue keeps.
//!
//! Validation follows RabbitMQ 3.10 (`rabbit_amqqueue:declare_args/0`, checked against
//! 3.10.8): integer arguments accept any AMQP integer type and must not be negative,
//! `x-expires` must also be non-zero, and a wrong type or value is refused with
//! 406 PRECONDITION_FAILED in RabbitMQ's words, e.g.
//! `invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}` or
//! `... : "expected integer, got longstr"`. A non-string `x-dead-letter-exchange` is
//! reported first, in RabbitMQ's other wording (`invalid type 'long' for arg ...`).
//! Arguments the broker does not know are kept (and compared on redeclare) but ignored.

use crate::error::AmqpError;
use amq_protocol::types::{AMQPValue, FieldTable};
use std::sync::Arc;

/// Per-queue message TTL in milliseconds.
pub const MESSAGE_TTL: &str = "x-message-ttl";
/// Milliseconds an unused queue lives.
pub const EXPIRES: &str = "x-expires";
/// Most ready messages a queue holds.
pub const MAX_LENGTH: &str = "x-max-length";
/// Most body bytes of ready messages a queue holds.
pub const MAX_LENGTH_BYTES: &str = "x-max-length-bytes";
/// What happens when a limit is reached: see [`Overflow`].
pub const OVERFLOW: &str = "x-overflow";
/// The exchange dead letters are published to.
pub const DEAD_LETTER_EXCHANGE: &str = "x-dead-letter-exchange";
/// The routing key dead letters are published with (default: their own).
pub const DEAD_LETTER_ROUTING_KEY: &str = "x-dead-letter-routing-key";

/// `x-overflow`: what a full queue does with one more message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready messages until the queue fits.
    #[default]
    DropHead,
    /// Refuse the new message: `basic.nack` in confirm mode, silently dropped otherwise.
    RejectPublish,
    /// As [`Overflow::RejectPublish`], and dead-letter the refused message.
    RejectPublishDlx,
}

impl Overflow {
    const NAMES: [(&'static str, Overflow); 3] = [
        ("drop-head", Overflow::DropHead),
        ("reject-publish", Overflow::RejectPublish),
        ("reject-publish-dlx", Overflow::RejectPublishDlx),
    ];
}

/// Where a queue's dead letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterTarget {
    pub exchange: Arc<str>,
    /// Replaces the message's routing keys (and drops its `CC`) when set.
    pub routing_key: Option<Arc<str>>,
}

/// Length limits of a queue (`x-max-length`, `x-max-length-bytes`, `x-overflow`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_length: Option<u64>,
    pub max_bytes: Option<u64>,
    pub overflow: Overflow,
}

/// The arguments of a queue the broker acts on, parsed once at declare time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArgs {
    pub message_ttl_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    /// `None` unless `x-max-length` or `x-max-length-bytes` is set.
    pub limits: Option<Limits>,
    pub dead_letter: Option<DeadLetterTarget>,
}

/// Why an argument was refused, printed as RabbitMQ prints its Erlang error terms.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Invalid {
    NotInteger(&'static str),
    UnacceptableType(&'static str),
    Negative(i64),
    Zero,
    Overflow,
    RoutingKeyWithoutDlx,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::NotInteger(t) => write!(f, "\"expected integer, got {t}\""),
            Invalid::UnacceptableType(t) => write!(f, "{{unacceptable_type,{t}}}"),
            Invalid::Negative(v) => write!(f, "{{value_negative,{v}}}"),
            Invalid::Zero => write!(f, "{{value_zero,0}}"),
            Invalid::Overflow => write!(
                f,
                "invalid_overflow (expected drop-head, reject-publish or reject-publish-dlx)"
            ),
            Invalid::RoutingKeyWithoutDlx => write!(f, "routing_key_but_no_dlx_defined"),
        }
    }
}

/// RabbitMQ's name for the type of a field value, as its error messages show it.
fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

fn integer(value: &AMQPValue) -> Result<i64, Invalid> {
    Ok(match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        other => return Err(Invalid::NotInteger(type_name(other))),
    })
}

fn non_negative(value: &AMQPValue) -> Result<u64, Invalid> {
    let v = integer(value)?;
    u64::try_from(v).map_err(|_| Invalid::Negative(v))
}

fn string(value: &AMQPValue) -> Result<Arc<str>, Invalid> {
    match value {
        AMQPValue::LongString(s) => Ok(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::ShortString(s) => Ok(s.as_str().into()),
        other => Err(Invalid::UnacceptableType(type_name(other))),
    }
}

impl QueueArgs {
    /// Validates and parses the arguments of a `queue.declare` for queue `queue`.
    pub fn parse(queue: &str, arguments: &FieldTable) -> Result<QueueArgs, AmqpError> {
        let args = arguments.inner();
        let check =
            |name: &'static str, parse: &dyn Fn(&AMQPValue) -> Result<(), Invalid>| match args
                .get(name)
            {
                None => Ok(()),
                Some(value) => parse(value).map_err(|why| {
                    AmqpError::precondition_failed(format!(
                        "invalid arg '{name}' for queue '{queue}' in vhost '/': {why}"
                    ))
                }),
            };
        let mut out = QueueArgs::default();
        let mut limits = Limits {
            max_length: None,
            max_bytes: None,
            overflow: Overflow::DropHead,
        };
        let mut dlx = None;
        let mut dlrk = None;
        if let Some(value) = args.get(DEAD_LETTER_EXCHANGE)
            && string(value).is_err()
        {
            return Err(AmqpError::precondition_failed(format!(
                "invalid type '{}' for arg '{DEAD_LETTER_EXCHANGE}' in queue '{queue}' in vhost '/'",
                type_name(value)
            )));
        }
        // Checked in RabbitMQ's order, so the first complaint is the same.
        check(EXPIRES, &|v| {
            let ms = non_negative(v)?;
            if ms == 0 {
                return Err(Invalid::Zero);
            }
            Ok(())
        })?;
        out.expires_ms = args.get(EXPIRES).and_then(|v| non_negative(v).ok());
        check(MESSAGE_TTL, &|v| non_negative(v).map(drop))?;
        out.message_ttl_ms = args.get(MESSAGE_TTL).and_then(|v| non_negative(v).ok());
        check(DEAD_LETTER_EXCHANGE, &|v| string(v).map(drop))?;
        if let Some(v) = args.get(DEAD_LETTER_EXCHANGE) {
            dlx = string(v).ok();
        }
        check(DEAD_LETTER_ROUTING_KEY, &|v| {
            string(v)?;
            if dlx.is_none() {
                return Err(Invalid::RoutingKeyWithoutDlx);
            }
            Ok(())
        })?;
        if let Some(v) = args.get(DEAD_LETTER_ROUTING_KEY) {
            dlrk = string(v).ok();
        }
        check(MAX_LENGTH, &|v| non_negative(v).map(drop))?;
        limits.max_length = args.get(MAX_LENGTH).and_then(|v| non_negative(v).ok());
        check(MAX_LENGTH_BYTES, &|v| non_negative(v).map(drop))?;
        limits.max_bytes = args
            .get(MAX_LENGTH_BYTES)
            .and_then(|v| non_negative(v).ok());
        let overflow = |v: &AMQPValue| -> Result<Overflow, Invalid> {
            let name = string(v)?;
            Overflow::NAMES
                .iter()
                .find(|(n, _)| *n == &*name)
                .map(|(_, o)| *o)
                .ok_or(Invalid::Overflow)
        };
        check(OVERFLOW, &|v| overflow(v).map(drop))?;
        if let Some(v) = args.get(OVERFLOW) {
            limits.overflow = overflow(v).unwrap_or_default();
        }
        if limits.max_length.is_some() || limits.max_bytes.is_some() {
            out.limits = Some(limits);
        }
        out.dead_letter = dlx.map(|exchange| DeadLetterTarget {
            exchange,
            routing_key: dlrk,
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn refusal(entries: &[(&str, AMQPValue)]) -> String {
        QueueArgs::parse("q", &table(entries)).unwrap_err().text
    }

    #[test]
    fn every_argument_is_parsed() {
        let args = QueueArgs::parse(
            "q",
            &table(&[
                (MESSAGE_TTL, AMQPValue::LongInt(100)),
                (EXPIRES, AMQPValue::LongLongInt(5000)),
                (MAX_LENGTH, AMQPValue::ShortUInt(3)),
                (MAX_LENGTH_BYTES, AMQPValue::LongUInt(1000)),
                (
                    OVERFLOW,
                    AMQPValue::LongString(LongString::from("reject-publish")),
                ),
                (DEAD_LETTER_EXCHANGE, AMQPValue::LongString("dlx".into())),
                (
                    DEAD_LETTER_ROUTING_KEY,
                    AMQPValue::LongString("dead".into()),
                ),
            ]),
        )
        .unwrap();
        assert_eq!(args.message_ttl_ms, Some(100));
        assert_eq!(args.expires_ms, Some(5000));
        assert_eq!(
            args.limits,
            Some(Limits {
                max_length: Some(3),
                max_bytes: Some(1000),
                overflow: Overflow::RejectPublish
            })
        );
        let dl = args.dead_letter.unwrap();
        assert_eq!(
            (&*dl.exchange, dl.routing_key.as_deref()),
            ("dlx", Some("dead"))
        );
    }

    #[test]
    fn wrong_values_and_types_name_the_argument_and_the_reason() {
        let text = refusal(&[(MESSAGE_TTL, AMQPValue::LongInt(-1))]);
        assert!(
            text.contains("'x-message-ttl'") && text.contains("value_negative"),
            "{text}"
        );
        let text = refusal(&[(EXPIRES, AMQPValue::LongInt(0))]);
        assert!(
            text.contains("'x-expires'") && text.contains("value_zero"),
            "{text}"
        );
        let text = refusal(&[(MAX_LENGTH, AMQPValue::LongString("ten".into()))]);
        assert!(text.contains("expected integer, got longstr"), "{text}");
        let text = refusal(&[(OVERFLOW, AMQPValue::LongLongInt(1))]);
        assert!(text.contains("unacceptable_type,long"), "{text}");
        let text = refusal(&[
            (MESSAGE_TTL, AMQPValue::LongInt(-1)),
            (DEAD_LETTER_EXCHANGE, AMQPValue::LongInt(1)),
        ]);
        assert!(
            text.contains("invalid type 'signedint' for arg 'x-dead-letter-exchange'"),
            "{text}"
        );
        let text = refusal(&[(OVERFLOW, AMQPValue::LongString("drop-tail".into()))]);
        assert!(text.contains("invalid_overflow"), "{text}");
        let text = refusal(&[(DEAD_LETTER_ROUTING_KEY, AMQPValue::LongString("k".into()))]);
        assert!(text.contains("routing_key_but_no_dlx_defined"), "{text}");
    }
}
