//! The hash map of the broker's hot path.
//!
//! Every publish looks up its exchange, its queues and their consumers' channels by name
//! or number, several times over. std's SipHash made those lookups a tenth of the
//! broker's CPU per message; foldhash is several times faster on short keys. Its seed is
//! random per map, so clients that choose queue names cannot aim for collisions they
//! cannot see.

/// A `HashMap` with foldhash's randomly seeded hasher.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
