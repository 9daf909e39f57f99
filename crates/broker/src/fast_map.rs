//! The hash map of the broker's hot path.
//!
//! Every publish looks up its exchange, its queues and their consumers' channels by name
//! or number, several times over. std's SipHash made those lookups a tenth of the
//! broker's CPU per message; foldhash is several times faster on short keys. It is not a
//! cryptographic hash and claims only minimal resistance to hash flooding: its seed is
//! random per process and never leaves it, so a client choosing queue names cannot
//! compute colliding ones offline; it could only hunt for them by timing its own
//! requests.

/// A `HashMap` with foldhash's randomly seeded hasher.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
