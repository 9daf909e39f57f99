//! Exchanges and their bindings: which queues a message goes to.
//!
//! Bindings without wildcards (all of a direct exchange's, and topic patterns with no
//! `*` or `#`) are found by hash lookup; topic patterns with wildcards, fanout and
//! headers bindings are scanned.

use crate::fast_map::FastMap;
use amq_protocol::types::{AMQPValue, FieldTable};
use std::sync::Arc;

/// The four exchange types of AMQP 0-9-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            "headers" => Some(Self::Headers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
        }
    }
}

/// One binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub queue: Arc<str>,
    pub routing_key: Box<str>,
    pub arguments: FieldTable,
}

/// An exchange with its bindings.
#[derive(Debug)]
pub struct Exchange {
    pub name: Arc<str>,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// Bindings by queue: a queue has few on one exchange, an exchange may have a
    /// fleet's worth, so binding, unbinding and deleting a queue cost the same at any size.
    bindings: FastMap<Arc<str>, Vec<Binding>>,
    /// Exact routing keys → queues, for bindings that need no pattern matching.
    exact: FastMap<Box<str>, Vec<Arc<str>>>,
    /// Topic bindings with wildcards, split into words once.
    patterns: Vec<(Vec<Box<str>>, Arc<str>)>,
}

impl Exchange {
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        Self {
            name: name.into(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            bindings: FastMap::default(),
            exact: FastMap::default(),
            patterns: Vec::new(),
        }
    }

    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values().flatten()
    }

    pub fn has_bindings(&self) -> bool {
        !self.bindings.is_empty()
    }

    fn is_exact(&self, routing_key: &str) -> bool {
        match self.kind {
            ExchangeKind::Direct => true,
            ExchangeKind::Topic => !routing_key.split('.').any(|w| w == "*" || w == "#"),
            ExchangeKind::Fanout | ExchangeKind::Headers => false,
        }
    }

    /// Adds a binding; binding the same queue, key and arguments again changes nothing.
    pub fn bind(&mut self, binding: Binding) {
        let same_queue = self.bindings.entry(binding.queue.clone()).or_default();
        if same_queue.contains(&binding) {
            return;
        }
        // Another binding of the queue with this key (other arguments) already routes it.
        let routed = same_queue
            .iter()
            .any(|b| b.routing_key == binding.routing_key);
        same_queue.push(binding.clone());
        if routed {
            return;
        }
        if self.is_exact(&binding.routing_key) {
            let queues = self.exact.entry(binding.routing_key).or_default();
            queues.push(binding.queue);
        } else if self.kind == ExchangeKind::Topic {
            let words = binding.routing_key.split('.').map(Box::from).collect();
            self.patterns.push((words, binding.queue));
        }
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&mut self, binding: &Binding) -> bool {
        let Some(same_queue) = self.bindings.get_mut(&binding.queue) else {
            return false;
        };
        let Some(at) = same_queue.iter().position(|b| b == binding) else {
            return false;
        };
        let removed = same_queue.remove(at);
        if same_queue.is_empty() {
            self.bindings.remove(&binding.queue);
        }
        self.forget_route(&removed);
        true
    }

    /// Removes every binding to `queue`.
    pub fn unbind_queue(&mut self, queue: &str) {
        for binding in self.bindings.remove(queue).unwrap_or_default() {
            self.forget_route(&binding);
        }
    }

    fn forget_route(&mut self, removed: &Binding) {
        // Another binding with other arguments may still route the same key to the queue.
        let still_routed = self
            .bindings
            .get(&removed.queue)
            .is_some_and(|same| same.iter().any(|b| b.routing_key == removed.routing_key));
        if still_routed {
            return;
        }
        if self.is_exact(&removed.routing_key) {
            if let Some(queues) = self.exact.get_mut(&removed.routing_key) {
                queues.retain(|q| *q != removed.queue);
                if queues.is_empty() {
                    self.exact.remove(&removed.routing_key);
                }
            }
        } else if self.kind == ExchangeKind::Topic {
            self.patterns.retain(|(words, queue)| {
                !(*queue == removed.queue && words.join(".") == *removed.routing_key)
            });
        }
    }

    /// Appends the queues a message with `routing_key` and `headers` goes to; the caller
    /// removes duplicates.
    pub fn route(&self, routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<Arc<str>>) {
        match self.kind {
            ExchangeKind::Fanout => out.extend(self.bindings.keys().cloned()),
            ExchangeKind::Direct => {
                out.extend(self.exact.get(routing_key).into_iter().flatten().cloned())
            }
            ExchangeKind::Topic => {
                out.extend(self.exact.get(routing_key).into_iter().flatten().cloned());
                if !self.patterns.is_empty() {
                    let words: Vec<&str> = routing_key.split('.').collect();
                    for (pattern, queue) in &self.patterns {
                        if topic_matches(pattern, &words) {
                            out.push(queue.clone());
                        }
                    }
                }
            }
            ExchangeKind::Headers => {
                let empty = FieldTable::default();
                let headers = headers.unwrap_or(&empty);
                for b in self.bindings() {
                    if headers_match(&b.arguments, headers) {
                        out.push(b.queue.clone());
                    }
                }
            }
        }
    }
}

/// Topic matching: `*` is exactly one word, `#` zero or more. Dynamic programming over
/// (pattern word, key word), so no pattern can make matching exponential.
pub fn topic_matches<P: AsRef<str>>(pattern: &[P], key: &[&str]) -> bool {
    // reachable[j]: the pattern prefix seen so far matches the first j key words.
    let mut reachable = vec![false; key.len() + 1];
    reachable[0] = true;
    for word in pattern {
        let word = word.as_ref();
        let mut next = vec![false; key.len() + 1];
        match word {
            "#" => {
                let mut any = false;
                for j in 0..=key.len() {
                    any |= reachable[j];
                    next[j] = any;
                }
            }
            _ => {
                for j in 0..key.len() {
                    if reachable[j] && (word == "*" || word == key[j]) {
                        next[j + 1] = true;
                    }
                }
            }
        }
        reachable = next;
    }
    reachable[key.len()]
}

/// Headers exchange matching: `x-match` = `all` (default) or `any` over the binding's
/// arguments that do not start with `x-`; a void value only asks for the key's presence.
pub fn headers_match(binding: &FieldTable, headers: &FieldTable) -> bool {
    let any = matches!(
        binding.inner().get("x-match"),
        Some(AMQPValue::LongString(s)) if s.as_bytes().starts_with(b"any")
    ) || matches!(
        binding.inner().get("x-match"),
        Some(AMQPValue::ShortString(s)) if s.as_str().starts_with("any")
    );
    let mut wanted = binding
        .inner()
        .iter()
        .filter(|(k, _)| !k.as_str().starts_with("x-"))
        .peekable();
    if wanted.peek().is_none() {
        return !any;
    }
    let mut test = wanted.map(|(k, v)| match (v, headers.inner().get(k.as_str())) {
        (_, None) => false,
        (AMQPValue::Void, Some(_)) => true,
        (v, Some(h)) => v == h,
    });
    if any {
        test.any(|ok| ok)
    } else {
        test.all(|ok| ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, key: &str) -> bool {
        let p: Vec<&str> = pattern.split('.').collect();
        let k: Vec<&str> = key.split('.').collect();
        topic_matches(&p, &k)
    }

    #[test]
    fn star_is_one_word_and_hash_any_number() {
        assert!(matches("web.*", "web.01"));
        assert!(!matches("web.*", "web.01.eu"));
        assert!(!matches("web.*", "web"));
        assert!(matches("db.#", "db"));
        assert!(matches("db.#", "db.eu.2"));
        assert!(matches("#", "anything.at.all"));
        assert!(matches("#.2", "db.eu.2"));
        assert!(matches("*.#.2", "db.2"));
        assert!(!matches("*.*.2", "db.2"));
        assert!(matches("a.#.b.#.c", "a.x.b.y.z.c"));
    }

    #[test]
    fn many_hashes_do_not_blow_up() {
        let pattern = vec!["#"; 200];
        let key = vec!["w"; 120];
        let mut p = pattern.clone();
        p.push("nope");
        assert!(topic_matches(&pattern, &key));
        assert!(!topic_matches(&p, &key));
    }

    #[test]
    fn exact_and_pattern_bindings_route_and_unbind() {
        let mut ex = Exchange::new(
            "t",
            ExchangeKind::Topic,
            false,
            false,
            false,
            FieldTable::default(),
        );
        for (q, key) in [("a", "web.01"), ("b", "web.*"), ("c", "#")] {
            ex.bind(Binding {
                queue: q.into(),
                routing_key: key.into(),
                arguments: FieldTable::default(),
            });
        }
        let mut out = Vec::new();
        ex.route("web.01", None, &mut out);
        out.sort();
        assert_eq!(out, vec![Arc::from("a"), Arc::from("b"), Arc::from("c")]);
        ex.unbind_queue("b");
        out.clear();
        ex.route("web.02", None, &mut out);
        assert_eq!(out, vec![Arc::from("c")]);
    }

    #[test]
    fn a_key_stays_routed_while_one_of_its_bindings_remains() {
        for kind in [ExchangeKind::Topic, ExchangeKind::Direct] {
            let mut ex = Exchange::new("x", kind, false, false, false, FieldTable::default());
            let with = |flag: bool| {
                let mut arguments = FieldTable::default();
                arguments.insert("flag".into(), AMQPValue::Boolean(flag));
                Binding {
                    queue: "q".into(),
                    routing_key: "minion.web-01".into(),
                    arguments,
                }
            };
            let routed = |ex: &Exchange| {
                let mut out = Vec::new();
                ex.route("minion.web-01", None, &mut out);
                out
            };
            ex.bind(with(true));
            ex.bind(with(false));
            ex.bind(with(false));
            assert_eq!(routed(&ex), vec![Arc::from("q")], "routed once");
            assert!(ex.unbind(&with(true)));
            assert_eq!(routed(&ex), vec![Arc::from("q")]);
            assert!(!ex.unbind(&with(true)), "already gone");
            assert!(ex.unbind(&with(false)));
            assert!(routed(&ex).is_empty());
            assert!(!ex.has_bindings());
        }
    }
}
