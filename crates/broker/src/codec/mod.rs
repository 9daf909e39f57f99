//! The AMQP 0-9-1 wire format as the broker uses it.
//!
//! Inbound, [`frame`] cuts frames out of a connection's read buffer after checking their
//! declared size against the negotiated `frame_max` (nothing is buffered past that bound).
//! The hot path is parsed by hand straight from those bytes: `basic.publish` in
//! [`publish`] and the few content-header properties the broker needs in [`content`].
//! Every other method goes through `amq-protocol` ([`method`]), after [`table`] has
//! checked the nesting depth of any field table it carries.
//!
//! Outbound, [`method`] encodes ordinary methods with `amq-protocol`, and [`delivery`]
//! writes `basic.deliver`, `basic.get-ok` and `basic.return` by hand, followed by the
//! stored content header and the body cut to the peer's `frame_max`.

pub mod content;
pub mod delivery;
pub mod frame;
pub mod method;
pub mod publish;
pub mod table;
pub(crate) mod wire;

/// Frame type octet of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type octet of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type octet of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type octet of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Bytes a frame adds around its payload: type, channel, size before, end octet after.
pub const FRAME_OVERHEAD: usize = 8;
/// The protocol header a 0-9-1 client opens with, and that the broker answers a wrong one with.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Class id of `basic`, the only content class.
pub const CLASS_BASIC: u16 = 60;
