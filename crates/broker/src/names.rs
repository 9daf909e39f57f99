//! Names the broker makes up: server-named queues and consumer tags.

use rand::Rng;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A random 22-character token (132 bits), URL- and shell-safe.
pub fn random_token() -> String {
    let mut rng = rand::rng();
    (0..22)
        .map(|_| ALPHABET[rng.random_range(0..64)] as char)
        .collect()
}

/// Prefix of server-named queues, as in RabbitMQ.
pub const SERVER_NAMED_QUEUE_PREFIX: &str = "amq.gen-";
/// Prefix of server-generated consumer tags, as in RabbitMQ.
pub const CONSUMER_TAG_PREFIX: &str = "amq.ctag-";
