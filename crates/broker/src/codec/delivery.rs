//! `basic.deliver`, `basic.get-ok` and `basic.return`, written by hand, each followed by
//! the message's stored content header and its body cut into frames of at most the
//! peer's `frame_max − 8` bytes; and the publisher confirms `basic.ack`/`basic.nack`,
//! whose queued `basic.ack` frame [`extend_ack`] can widen in place.

use super::frame::put_frame;
use super::wire::put_short_str;
use super::{CLASS_BASIC, FRAME_BODY, FRAME_HEADER, FRAME_METHOD, FRAME_OVERHEAD};

const METHOD_RETURN: u16 = 50;
const METHOD_DELIVER: u16 = 60;
const METHOD_GET_OK: u16 = 71;
const METHOD_ACK: u16 = 80;
const METHOD_NACK: u16 = 120;

/// Where a message was published: the exchange and routing key a consumer is told.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

/// The channel a delivery goes to, and that connection's negotiated `frame_max`.
#[derive(Debug, Clone, Copy)]
pub struct ChannelOut {
    pub channel: u16,
    pub frame_max: u32,
}

/// A message's content as stored: the content header payload and the body.
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    pub header: &'a [u8],
    pub body: &'a [u8],
}

fn put_ids(out: &mut Vec<u8>, method: u16) {
    out.extend_from_slice(&CLASS_BASIC.to_be_bytes());
    out.extend_from_slice(&method.to_be_bytes());
}

/// `basic.deliver` and the content, to a consumer.
pub fn put_deliver(
    out: &mut Vec<u8>,
    to: ChannelOut,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    origin: Origin<'_>,
    content: Content<'_>,
) {
    put_frame(out, FRAME_METHOD, to.channel, |o| {
        put_ids(o, METHOD_DELIVER);
        put_short_str(o, consumer_tag.as_bytes());
        o.extend_from_slice(&delivery_tag.to_be_bytes());
        o.push(u8::from(redelivered));
        put_short_str(o, origin.exchange.as_bytes());
        put_short_str(o, origin.routing_key.as_bytes());
    });
    put_content(out, to, content);
}

/// `basic.get-ok` and the content, to a `basic.get`.
pub fn put_get_ok(
    out: &mut Vec<u8>,
    to: ChannelOut,
    delivery_tag: u64,
    redelivered: bool,
    origin: Origin<'_>,
    message_count: u32,
    content: Content<'_>,
) {
    put_frame(out, FRAME_METHOD, to.channel, |o| {
        put_ids(o, METHOD_GET_OK);
        o.extend_from_slice(&delivery_tag.to_be_bytes());
        o.push(u8::from(redelivered));
        put_short_str(o, origin.exchange.as_bytes());
        put_short_str(o, origin.routing_key.as_bytes());
        o.extend_from_slice(&message_count.to_be_bytes());
    });
    put_content(out, to, content);
}

/// `basic.return` and the content, to the publisher of an unroutable mandatory message.
pub fn put_return(
    out: &mut Vec<u8>,
    to: ChannelOut,
    reply_code: u16,
    reply_text: &str,
    origin: Origin<'_>,
    content: Content<'_>,
) {
    put_frame(out, FRAME_METHOD, to.channel, |o| {
        put_ids(o, METHOD_RETURN);
        o.extend_from_slice(&reply_code.to_be_bytes());
        put_short_str(o, reply_text.as_bytes());
        put_short_str(o, origin.exchange.as_bytes());
        put_short_str(o, origin.routing_key.as_bytes());
    });
    put_content(out, to, content);
}

/// `basic.ack` from the broker: a publisher confirm.
pub fn put_ack(out: &mut Vec<u8>, channel: u16, delivery_tag: u64, multiple: bool) {
    put_frame(out, FRAME_METHOD, channel, |o| {
        put_ids(o, METHOD_ACK);
        o.extend_from_slice(&delivery_tag.to_be_bytes());
        o.push(u8::from(multiple));
    });
}

/// Bytes of the frame [`put_ack`] writes: frame header (7), class and method ids (4),
/// delivery tag (8), `multiple` (1), frame end (1).
pub const ACK_FRAME_LEN: usize = 21;

/// Where the delivery tag starts in an ack frame; `multiple` follows it.
const ACK_TAG_AT: usize = 11;

/// Rewrites an ack frame written by [`put_ack`] (`frame`, exactly [`ACK_FRAME_LEN`]
/// bytes) into `basic.ack` of every tag up to `delivery_tag` (`multiple = true`).
pub fn extend_ack(frame: &mut [u8], delivery_tag: u64) {
    debug_assert_eq!(frame.len(), ACK_FRAME_LEN);
    frame[ACK_TAG_AT..ACK_TAG_AT + 8].copy_from_slice(&delivery_tag.to_be_bytes());
    frame[ACK_TAG_AT + 8] = 1;
}

/// `basic.nack` from the broker: a negative publisher confirm (the message was refused,
/// e.g. by a full queue with `x-overflow = reject-publish`).
pub fn put_nack(out: &mut Vec<u8>, channel: u16, delivery_tag: u64, multiple: bool) {
    put_frame(out, FRAME_METHOD, channel, |o| {
        put_ids(o, METHOD_NACK);
        o.extend_from_slice(&delivery_tag.to_be_bytes());
        o.push(u8::from(multiple));
    });
}

/// The content header frame, then the body in frames that fit `frame_max`.
fn put_content(out: &mut Vec<u8>, to: ChannelOut, content: Content<'_>) {
    let ChannelOut { channel, frame_max } = to;
    out.reserve(content.header.len() + content.body.len() + 2 * FRAME_OVERHEAD);
    put_frame(out, FRAME_HEADER, channel, |o| {
        o.extend_from_slice(content.header)
    });
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    for piece in content.body.chunks(chunk) {
        put_frame(out, FRAME_BODY, channel, |o| o.extend_from_slice(piece));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::{AMQPFrame, parse_frame};
    use amq_protocol::protocol::{AMQPClass, basic};

    #[test]
    fn an_extended_ack_parses_back_as_a_multiple_ack_of_the_new_tag() {
        let mut out = vec![0xAB]; // a byte of an earlier frame
        put_ack(&mut out, 3, 41, false);
        assert_eq!(out.len(), 1 + ACK_FRAME_LEN);
        let (_, frame) = parse_frame(&out[1..]).unwrap();
        let AMQPFrame::Method(3, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) = frame else {
            panic!("not an ack: {frame:?}");
        };
        assert_eq!((ack.delivery_tag, ack.multiple), (41, false));
        extend_ack(&mut out[1..], 45);
        let (rest, frame) = parse_frame(&out[1..]).unwrap();
        assert!(rest.is_empty());
        let AMQPFrame::Method(3, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) = frame else {
            panic!("not an ack: {frame:?}");
        };
        assert_eq!((ack.delivery_tag, ack.multiple), (45, true));
        assert_eq!(out[0], 0xAB);
    }

    #[test]
    fn deliver_parses_back_with_amq_protocol_and_the_body_is_split() {
        let mut out = Vec::new();
        let origin = Origin {
            exchange: "amq.topic",
            routing_key: "web.01",
        };
        let header = [0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0];
        let content = Content {
            header: &header,
            body: b"0123456789",
        };
        let to = ChannelOut {
            channel: 7,
            frame_max: 4 + 8,
        };
        put_deliver(&mut out, to, "ctag", 42, true, origin, content);
        let (rest, frame) = parse_frame(&out[..]).unwrap();
        let AMQPFrame::Method(7, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) = frame else {
            panic!("not a deliver: {frame:?}");
        };
        assert_eq!(
            (d.consumer_tag.as_str(), d.delivery_tag, d.redelivered),
            ("ctag", 42, true)
        );
        assert_eq!(d.routing_key.as_str(), "web.01");
        let (mut rest, header) = parse_frame(rest).unwrap();
        assert!(header.is_header());
        let mut body = Vec::new();
        while !rest.is_empty() {
            let (r, frame) = parse_frame(rest).unwrap();
            let AMQPFrame::Body(7, piece) = frame else {
                panic!()
            };
            assert!(piece.len() <= 4);
            body.extend_from_slice(&piece);
            rest = r;
        }
        assert_eq!(body, b"0123456789");
    }
}
