//! Targets: which minions a command is for.
//!
//! `'*'` alone is every minion (as in Salt); any other pattern is an AMQP topic pattern
//! over dotted ids (`web.*` one segment, `db.#` any depth); `-G` names a group and `-L`
//! a list of ids. The master resolves a target against its registry; a minion checks
//! that the signed target names it before it runs anything.

use crate::names::{NameError, check_name};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Whom a command is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// Every minion: `'*'`.
    All,
    /// A topic pattern over ids: `web.*`, `db.#`, or a plain id.
    Pattern(String),
    /// Every minion of a group (`-G`).
    Group(String),
    /// These ids (`-L a,b,c`).
    List(Vec<String>),
}

impl Target {
    /// A pattern as typed: `*` alone, or dot-separated segments that are names, `*` or
    /// `#`.
    pub fn pattern(text: &str) -> Result<Self, NameError> {
        if text == "*" {
            return Ok(Target::All);
        }
        let literal = text.replace(['*', '#'], "x");
        check_name("target", &literal).map_err(|e| NameError {
            name: text.chars().take(64).collect(),
            ..e
        })?;
        if text
            .split('.')
            .any(|s| (s.contains('*') || s.contains('#')) && s.len() > 1)
        {
            return Err(NameError {
                kind: "target",
                name: text.to_owned(),
                reason: "'*' and '#' must stand alone as a whole segment",
            });
        }
        Ok(Target::Pattern(text.to_owned()))
    }

    /// A group target (`-G NAME`).
    pub fn group(name: &str) -> Result<Self, NameError> {
        check_name("group", name)?;
        Ok(Target::Group(name.to_owned()))
    }

    /// A list target (`-L a,b,c`).
    pub fn list(text: &str) -> Result<Self, NameError> {
        let ids: Vec<String> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if ids.is_empty() {
            return Err(NameError {
                kind: "list",
                name: text.to_owned(),
                reason: "it names no minion",
            });
        }
        for id in &ids {
            check_name("id", id)?;
        }
        Ok(Target::List(ids))
    }

    /// Whether the minion `id` with `groups` is targeted.
    pub fn matches(&self, id: &str, groups: &[String]) -> bool {
        match self {
            Target::All => true,
            Target::Pattern(pattern) => topic_matches(pattern, id),
            Target::Group(group) => groups.iter().any(|g| g == group),
            Target::List(ids) => ids.iter().any(|i| i == id),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("*"),
            Target::Pattern(p) => f.write_str(p),
            Target::Group(g) => write!(f, "-G {g}"),
            Target::List(ids) => write!(f, "-L {}", ids.join(",")),
        }
    }
}

/// AMQP topic matching: `*` is exactly one segment, `#` zero or more. Dynamic
/// programming over (pattern, key) positions: linear in their product, whatever the
/// number of `#`.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    // matched[j]: the pattern so far matches the first j words of the key.
    let mut matched = vec![false; key.len() + 1];
    matched[0] = true;
    for segment in pattern {
        let mut next = vec![false; key.len() + 1];
        for j in 0..=key.len() {
            next[j] = match segment {
                "#" => matched[j] || (j > 0 && next[j - 1]),
                _ => j > 0 && matched[j - 1] && (segment == "*" || segment == key[j - 1]),
            };
        }
        matched = next;
    }
    matched[key.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn patterns_match_as_topics() {
        let web = Target::pattern("web.*").unwrap();
        assert!(web.matches("web.01", &[]));
        assert!(!web.matches("web.eu.01", &[]));
        assert!(!web.matches("db.01", &[]));
        let db = Target::pattern("db.#").unwrap();
        assert!(db.matches("db.eu.2", &[]) && db.matches("db", &[]) && !db.matches("web.1", &[]));
        assert!(Target::pattern("web.01").unwrap().matches("web.01", &[]));
    }

    #[test]
    fn star_alone_is_everyone() {
        assert_eq!(Target::pattern("*").unwrap(), Target::All);
        assert!(Target::All.matches("anything.at.all", &[]));
    }

    #[test]
    fn groups_and_lists() {
        let g = Target::group("web").unwrap();
        assert!(g.matches("x", &groups(&["db", "web"])) && !g.matches("x", &groups(&["db"])));
        let l = Target::list("a, b.c").unwrap();
        assert!(l.matches("b.c", &[]) && !l.matches("d", &[]));
    }

    #[test]
    fn many_hashes_match_in_linear_time() {
        let pattern = vec!["#"; 200].join(".") + ".x";
        let key = vec!["a"; 200].join(".");
        assert!(!topic_matches(&pattern, &key));
        assert!(topic_matches(&pattern, &(key + ".x")));
        assert!(topic_matches("a.#.b.#", "a.b"));
        assert!(!topic_matches("a.*.b", "a.b"));
    }

    #[test]
    fn bad_targets_are_refused() {
        for bad in ["web*", "a/b", "web..x", "", "Web.*"] {
            assert!(Target::pattern(bad).is_err(), "{bad}");
        }
        assert!(Target::list(",").is_err());
        assert!(Target::list("a,*").is_err());
        assert!(Target::group("web.*").is_err());
    }
}
