//! `basic.publish`, parsed by hand: it arrives once per message, so it skips the generic
//! method parser.

use super::wire::{Malformed, Reader};

/// Class and method ids of `basic.publish`.
pub const BASIC_PUBLISH: (u16, u16) = (60, 40);

/// The arguments of one `basic.publish`, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishArgs<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub mandatory: bool,
    pub immediate: bool,
}

/// Whether a method frame payload is `basic.publish`.
pub fn is_publish(payload: &[u8]) -> bool {
    payload.len() >= 4 && payload[..4] == [0, 60, 0, 40]
}

/// Parses the arguments of a `basic.publish` method frame payload (ids included).
pub fn parse_publish(payload: &[u8]) -> Result<PublishArgs<'_>, Malformed> {
    let mut r = Reader::new(payload);
    r.take(4)?; // class and method ids
    r.u16()?; // reserved (ticket)
    let exchange = r.short_str()?;
    let routing_key = r.short_str()?;
    let bits = r.u8()?;
    Ok(PublishArgs {
        exchange,
        routing_key,
        mandatory: bits & 1 != 0,
        immediate: bits & 2 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::{AMQPClass, basic};

    #[test]
    fn matches_what_amq_protocol_generates() {
        let class = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "ex".into(),
            routing_key: "a.b".into(),
            mandatory: true,
            immediate: false,
        }));
        let mut payload = Vec::new();
        crate::codec::method::encode_into(&mut payload, &class);
        assert!(is_publish(&payload));
        assert_eq!(
            parse_publish(&payload).unwrap(),
            PublishArgs {
                exchange: "ex",
                routing_key: "a.b",
                mandatory: true,
                immediate: false
            }
        );
        assert_eq!(parse_publish(&payload[..payload.len() - 1]), Err(Malformed));
    }
}
