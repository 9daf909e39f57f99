//! The key registry: who may connect, as files an operator can read.
//!
//! Layout under the master's data dir:
//!
//! ```text
//! keys/pending/web.01.json    waiting for `dispatch key accept web.01`
//! keys/accepted/web.01.json
//! keys/rejected/web.01.json
//! keys/denied/web.01.json     a known id that presented another key (that other key)
//! ```
//!
//! Each file is one JSON object ([`KeyRecord`]) with the id, role, public key (hex),
//! fingerprint, groups and first/last-seen times. Files are written whole to a temporary
//! name and renamed, so a crash never leaves half a record. An id lives in at most one of
//! pending/accepted/rejected; `denied/` records the impostor beside the real record and
//! never replaces it. The registry is read once at start and kept in memory behind one
//! mutex; every change is written through before it is acknowledged.

use dispatch_common::keys::{Fingerprint, PublicKey};
use dispatch_common::message::now_ms;
use dispatch_common::names::check_name;
use dispatch_common::rpc::{KeyInfo, KeyState, Role};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the registry says about a key that tries to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Accepted: connect with the recorded role.
    Admitted(Role),
    /// Refused; the text tells the client (and its operator) what to do.
    Refused(String),
}

/// One key on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub role: Role,
    /// The public key, 64 hex digits.
    pub key: String,
    pub fingerprint: String,
    pub groups: Vec<String>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// When its state last changed; decides between two files after a crash.
    #[serde(default)]
    pub changed_ms: u64,
}

impl KeyRecord {
    pub fn new(id: &str, role: Role, key: &PublicKey, groups: &[String]) -> Self {
        let now = now_ms();
        Self {
            id: id.to_owned(),
            role,
            key: key.to_hex(),
            fingerprint: key.fingerprint().to_string(),
            groups: groups.to_vec(),
            first_seen_ms: now,
            last_seen_ms: now,
            changed_ms: now,
        }
    }

    pub fn public_key(&self) -> Option<PublicKey> {
        PublicKey::from_hex(&self.key)
    }

    fn info(&self, state: KeyState) -> KeyInfo {
        KeyInfo {
            id: self.id.clone(),
            role: self.role,
            state,
            fingerprint: self.fingerprint.clone(),
            groups: self.groups.clone(),
            first_seen_ms: self.first_seen_ms,
            last_seen_ms: self.last_seen_ms,
        }
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no {state} key '{id}'{hint}")]
    NotFound {
        id: String,
        state: &'static str,
        hint: String,
    },
    #[error(transparent)]
    BadName(#[from] dispatch_common::names::NameError),
    #[error("key registry file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Which keys are accepted without an operator.
#[derive(Debug, Clone, Default)]
pub enum AutoAccept {
    /// Every new key waits for an operator (the default).
    #[default]
    Off,
    /// Every new key is accepted.
    All,
    /// New keys with one of these fingerprints are accepted; others wait.
    Fingerprints(Vec<Fingerprint>),
}

/// The registry: records by state, mirrored on disk.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    records: BTreeMap<String, (KeyState, KeyRecord)>,
    denied: BTreeMap<String, KeyRecord>,
    auto_accept: AutoAccept,
}

impl Registry {
    /// Opens (creating) the registry under `dir`.
    pub fn open(dir: &Path, auto_accept: AutoAccept) -> Result<Self, RegistryError> {
        let mut registry = Self {
            dir: dir.to_owned(),
            records: BTreeMap::new(),
            denied: BTreeMap::new(),
            auto_accept,
        };
        for state in KeyState::ALL {
            let folder = registry.folder(state);
            std::fs::create_dir_all(&folder).map_err(|source| RegistryError::Io {
                path: folder.clone(),
                source,
            })?;
            for record in read_folder(&folder)? {
                if state == KeyState::Denied {
                    registry.denied.insert(record.id.clone(), record);
                } else if let Some((older, _)) = registry.records.get(&record.id) {
                    // A crash between writing a new state and removing the old file
                    // leaves both: the most recently seen record is the newer one.
                    let newer = registry.records[&record.id].1.changed_ms <= record.changed_ms;
                    tracing::warn!(id = %record.id, first = older.as_str(), second = state.as_str(), "key in two states; keeping the newer");
                    if newer {
                        registry.records.insert(record.id.clone(), (state, record));
                    }
                } else {
                    registry.records.insert(record.id.clone(), (state, record));
                }
            }
        }
        Ok(registry)
    }

    /// Decides whether `key` may connect as `id`, recording what it learns: an unknown key
    /// becomes pending (or accepted under auto-accept), a known id with another key is
    /// denied, an accepted key's last-seen time moves.
    pub fn admit(
        &mut self,
        id: &str,
        role: Role,
        key: &PublicKey,
        groups: &[String],
    ) -> Result<(Admission, Option<KeyRecord>), RegistryError> {
        let fingerprint = key.fingerprint();
        let Some((state, record)) = self.records.get(id).cloned() else {
            if self.ids_in(KeyState::Pending).len() >= MAX_PENDING {
                tracing::warn!(%id, %fingerprint, "refused a new key: too many pending keys");
                return Ok((
                    Admission::Refused(format!(
                        "too many pending keys ({MAX_PENDING}); the operator must accept or \
                         delete some first"
                    )),
                    None,
                ));
            }
            let record = KeyRecord::new(id, role, key, groups);
            if role == Role::Minion && self.auto_accepts(&fingerprint) {
                tracing::info!(%id, %fingerprint, "auto-accepted new key");
                self.store(KeyState::Accepted, record.clone())?;
                return Ok((Admission::Admitted(role), Some(record)));
            }
            tracing::warn!(%id, %fingerprint, ?role, "new key is pending");
            self.store(KeyState::Pending, record)?;
            return Ok((Admission::Refused(pending_text(id, role)), None));
        };
        if record.key != key.to_hex() {
            tracing::error!(
                %id, presented = %fingerprint, on_record = %record.fingerprint,
                "DENIED: a known id presented another key; it may be an impostor"
            );
            let known_impostor = self.denied.get(id).is_some_and(|d| d.key == key.to_hex());
            if !known_impostor {
                let impostor = KeyRecord::new(id, role, key, groups);
                self.write(KeyState::Denied, &impostor)?;
                self.denied.insert(id.to_owned(), impostor);
            }
            return Ok((Admission::Refused(denied_text(id)), None));
        }
        let mut record = record;
        record.last_seen_ms = now_ms();
        if state == KeyState::Pending {
            record.groups = groups.to_vec();
        }
        let admission = match state {
            KeyState::Accepted if !same_groups(&record.groups, groups) => {
                tracing::warn!(%id, accepted = ?record.groups, asked = ?groups, "refused: groups changed");
                Admission::Refused(format!(
                    "'{id}' asks for groups {groups:?} but was accepted with {:?}; \
                     `dispatch key delete {id}` lets it ask again",
                    record.groups
                ))
            }
            KeyState::Accepted => Admission::Admitted(record.role),
            KeyState::Pending => Admission::Refused(pending_text(id, record.role)),
            KeyState::Rejected => Admission::Refused(format!(
                "the key of '{id}' was rejected; `dispatch key delete {id}` lets it ask again"
            )),
            KeyState::Denied => unreachable!("denied keys are kept apart"),
        };
        self.store(state, record)?;
        Ok((admission, None))
    }

    fn auto_accepts(&self, fingerprint: &Fingerprint) -> bool {
        match &self.auto_accept {
            AutoAccept::Off => false,
            AutoAccept::All => true,
            AutoAccept::Fingerprints(list) => list.contains(fingerprint),
        }
    }

    /// Records `key` as accepted for `id` (the master's local operator), replacing any
    /// other record of that id.
    pub fn ensure_accepted(
        &mut self,
        id: &str,
        role: Role,
        key: &PublicKey,
    ) -> Result<(), RegistryError> {
        if let Some((KeyState::Accepted, record)) = self.records.get(id)
            && record.key == key.to_hex()
        {
            return Ok(());
        }
        self.store(KeyState::Accepted, KeyRecord::new(id, role, key, &[]))
    }

    /// The accepted key of `id` with its role, if any.
    pub fn accepted(&self, id: &str) -> Option<&KeyRecord> {
        match self.records.get(id) {
            Some((KeyState::Accepted, record)) => Some(record),
            _ => None,
        }
    }

    /// The public key of `id` if it is accepted with `role` (and its key is readable).
    pub fn accepted_key(&self, id: &str, role: Role) -> Option<PublicKey> {
        self.accepted(id)
            .filter(|record| record.role == role)
            .and_then(KeyRecord::public_key)
    }

    /// Every accepted record of `role`.
    pub fn accepted_with_role(&self, role: Role) -> Vec<KeyRecord> {
        self.records
            .values()
            .filter(|(state, r)| *state == KeyState::Accepted && r.role == role)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Every key, by id, denied ones after the record they shadow.
    pub fn list(&self) -> Vec<KeyInfo> {
        let mut all: Vec<KeyInfo> = self
            .records
            .values()
            .map(|(state, record)| record.info(*state))
            .collect();
        all.extend(self.denied.values().map(|r| r.info(KeyState::Denied)));
        all.sort_by(|a, b| a.id.cmp(&b.id).then(a.state.as_str().cmp(b.state.as_str())));
        all
    }

    /// Accepts the pending (or rejected) keys of `ids`; with `all`, every pending
    /// *minion* key (operator keys are accepted only by name). Every id is checked
    /// before anything changes. Returns the records accepted.
    pub fn accept(&mut self, ids: &[String], all: bool) -> Result<Vec<KeyRecord>, RegistryError> {
        let ids: Vec<String> = if all {
            self.records
                .values()
                .filter(|(state, r)| *state == KeyState::Pending && r.role == Role::Minion)
                .map(|(_, r)| r.id.clone())
                .collect()
        } else {
            ids.to_vec()
        };
        let acceptable = [KeyState::Pending, KeyState::Rejected];
        for id in &ids {
            check_name("id", id)?;
            if !matches!(self.records.get(id), Some((state, _)) if acceptable.contains(state)) {
                return Err(self.not_found(id, "pending"));
            }
        }
        let mut accepted = Vec::new();
        for id in &ids {
            let (_, record) = self.records.get(id).cloned().expect("checked above");
            self.store(KeyState::Accepted, record.clone())?;
            accepted.push(record);
        }
        Ok(accepted)
    }

    /// Rejects the pending or accepted key of `id`.
    pub fn reject(&mut self, id: &str) -> Result<KeyRecord, RegistryError> {
        check_name("id", id)?;
        let record = match self.records.get(id) {
            Some((KeyState::Pending | KeyState::Accepted, record)) => record.clone(),
            _ => return Err(self.not_found(id, "pending or accepted")),
        };
        self.store(KeyState::Rejected, record.clone())?;
        Ok(record)
    }

    /// Forgets every key of `id`, denied ones included, so it can ask again. Returns the
    /// record that was accepted, if one was.
    pub fn delete(&mut self, id: &str) -> Result<Option<KeyRecord>, RegistryError> {
        check_name("id", id)?;
        let known = self.records.remove(id);
        let denied = self.denied.remove(id);
        if known.is_none() && denied.is_none() {
            return Err(self.not_found(id, "known"));
        }
        for state in KeyState::ALL {
            self.remove_file(state, id)?;
        }
        Ok(known
            .filter(|(state, _)| *state == KeyState::Accepted)
            .map(|(_, record)| record))
    }

    fn ids_in(&self, state: KeyState) -> Vec<String> {
        self.records
            .iter()
            .filter(|(_, (s, _))| *s == state)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn not_found(&self, id: &str, state: &'static str) -> RegistryError {
        let hint = match self.records.get(id) {
            Some((current, _)) => format!(" (it is {})", current.as_str()),
            None if self.denied.contains_key(id) => " (only a denied key)".to_owned(),
            None => "; `dispatch key list` shows the known keys".to_owned(),
        };
        RegistryError::NotFound {
            id: id.to_owned(),
            state,
            hint,
        }
    }

    /// Records `record` in `state`: the new file is durable before the old one goes,
    /// so a crash leaves at worst both (the newer state wins on reading, see [`open`]).
    ///
    /// [`open`]: Registry::open
    fn store(&mut self, state: KeyState, mut record: KeyRecord) -> Result<(), RegistryError> {
        let old = self.records.get(&record.id).map(|(old, _)| *old);
        if old != Some(state) {
            record.changed_ms = now_ms();
        }
        self.write(state, &record)?;
        if let Some(old) = old
            && old != state
        {
            self.remove_file(old, &record.id)?;
        }
        self.records.insert(record.id.clone(), (state, record));
        Ok(())
    }

    fn folder(&self, state: KeyState) -> PathBuf {
        self.dir.join(state.as_str())
    }

    fn path(&self, state: KeyState, id: &str) -> PathBuf {
        self.folder(state).join(format!("{id}.json"))
    }

    /// Writes `record` durably ([`dispatch_common::durable::replace`]).
    fn write(&self, state: KeyState, record: &KeyRecord) -> Result<(), RegistryError> {
        let path = self.path(state, &record.id);
        let text = serde_json::to_string_pretty(record).expect("records always encode") + "\n";
        dispatch_common::durable::replace(&path, text.as_bytes())
            .map_err(|source| RegistryError::Io { path, source })
    }

    fn remove_file(&self, state: KeyState, id: &str) -> Result<(), RegistryError> {
        let path = self.path(state, id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RegistryError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

/// Pending keys at most; further new keys are refused until an operator acts.
pub const MAX_PENDING: usize = 10_000;

fn pending_text(id: &str, role: Role) -> String {
    let role = match role {
        Role::Minion => "minion",
        Role::Operator => "operator",
    };
    format!(
        "{role} key of '{id}' is pending: compare fingerprints, then `dispatch key accept {id}`"
    )
}

fn denied_text(id: &str) -> String {
    format!("denied: '{id}' has another key on record; if re-keyed, `dispatch key delete {id}`")
}

fn same_groups(a: &[String], b: &[String]) -> bool {
    let sorted = |g: &[String]| {
        let mut g = g.to_vec();
        g.sort();
        g.dedup();
        g
    };
    sorted(a) == sorted(b)
}

/// Reads every record of a folder; a file that does not parse, or whose name does not
/// match its id, is skipped with a warning (an operator may have edited it).
fn read_folder(folder: &Path) -> Result<Vec<KeyRecord>, RegistryError> {
    let io = |source| RegistryError::Io {
        path: folder.to_owned(),
        source,
    };
    let mut records = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<KeyRecord>(&text).map_err(|e| e.to_string()))
            .and_then(|record| {
                let named = path.file_stem().is_some_and(|s| *s == *record.id);
                let valid =
                    check_name("id", &record.id).is_ok() && record.public_key().is_some() && named;
                if valid {
                    Ok(record)
                } else {
                    Err("its id, file name or key is invalid".to_owned())
                }
            });
        match parsed {
            Ok(record) => records.push(record),
            Err(e) => tracing::warn!(path = %path.display(), "skipping key record: {e}"),
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_common::keys::KeyPair;

    fn open(dir: &Path) -> Registry {
        Registry::open(dir, AutoAccept::Off).unwrap()
    }

    #[test]
    fn a_new_key_is_pending_then_accepted_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().public();
        let mut reg = open(dir.path());
        let groups = vec!["web".to_string()];
        let (admission, _) = reg.admit("web.01", Role::Minion, &key, &groups).unwrap();
        assert!(
            matches!(admission, Admission::Refused(t) if t.contains("dispatch key accept web.01"))
        );
        assert!(dir.path().join("pending/web.01.json").exists());
        reg.accept(&["web.01".into()], false).unwrap();
        assert!(!dir.path().join("pending/web.01.json").exists());
        let mut reg = open(dir.path());
        let (admission, _) = reg.admit("web.01", Role::Minion, &key, &groups).unwrap();
        assert_eq!(admission, Admission::Admitted(Role::Minion));
        assert_eq!(reg.accepted("web.01").unwrap().groups, groups);
        let (changed, _) = reg.admit("web.01", Role::Minion, &key, &[]).unwrap();
        assert!(
            matches!(changed, Admission::Refused(t) if t.contains("dispatch key delete web.01"))
        );
    }

    #[test]
    fn accept_all_takes_minions_only_and_a_bad_id_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = open(dir.path());
        for (id, role) in [("web.01", Role::Minion), ("web.02", Role::Operator)] {
            reg.admit(id, role, &KeyPair::generate().public(), &[])
                .unwrap();
        }
        let err = reg
            .accept(&["web.01".into(), "typo".into()], false)
            .unwrap_err();
        assert!(err.to_string().contains("typo"));
        assert!(
            reg.accepted("web.01").is_none(),
            "nothing changes when one id is bad"
        );
        let accepted = reg.accept(&[], true).unwrap();
        assert_eq!(accepted.len(), 1);
        assert_eq!(accepted[0].id, "web.01");
        assert!(
            reg.accepted("web.02").is_none(),
            "operators are accepted by name only"
        );
    }

    #[test]
    fn after_a_crash_between_two_states_the_newer_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().public();
        let mut reg = open(dir.path());
        reg.admit("db.01", Role::Minion, &key, &[]).unwrap();
        let pending = std::fs::read(dir.path().join("pending/db.01.json")).unwrap();
        reg.accept(&["db.01".into()], false).unwrap();
        std::fs::write(dir.path().join("pending/db.01.json"), pending).unwrap();
        let reg = open(dir.path());
        assert!(reg.accepted("db.01").is_some());
    }

    #[test]
    fn another_key_for_a_known_id_is_denied_and_never_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let (real, fake) = (KeyPair::generate().public(), KeyPair::generate().public());
        let mut reg = open(dir.path());
        reg.admit("db.01", Role::Minion, &real, &[]).unwrap();
        reg.accept(&[], true).unwrap();
        let (admission, _) = reg.admit("db.01", Role::Minion, &fake, &[]).unwrap();
        assert!(matches!(admission, Admission::Refused(t) if t.contains("denied")));
        assert_eq!(reg.accepted("db.01").unwrap().key, real.to_hex());
        let states: Vec<_> = reg.list().iter().map(|k| k.state).collect();
        assert_eq!(states, [KeyState::Accepted, KeyState::Denied]);
        reg.delete("db.01").unwrap();
        assert!(reg.list().is_empty());
        assert!(!dir.path().join("denied/db.01.json").exists());
    }

    #[test]
    fn rejected_keys_are_refused_with_their_own_text() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().public();
        let mut reg = open(dir.path());
        reg.admit("x", Role::Minion, &key, &[]).unwrap();
        reg.reject("x").unwrap();
        let (admission, _) = reg.admit("x", Role::Minion, &key, &[]).unwrap();
        assert!(matches!(admission, Admission::Refused(t) if t.contains("rejected")));
        let err = reg.reject("nobody").unwrap_err().to_string();
        assert!(err.contains("dispatch key list"), "{err}");
    }

    #[test]
    fn auto_accept_can_be_limited_to_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let (good, other) = (KeyPair::generate().public(), KeyPair::generate().public());
        let auto = AutoAccept::Fingerprints(vec![good.fingerprint()]);
        let mut reg = Registry::open(dir.path(), auto).unwrap();
        let (operator, _) = reg.admit("op", Role::Operator, &good, &[]).unwrap();
        assert!(
            matches!(operator, Admission::Refused(_)),
            "operators are never auto-accepted"
        );
        let (admission, accepted) = reg.admit("a", Role::Minion, &good, &[]).unwrap();
        assert_eq!(admission, Admission::Admitted(Role::Minion));
        assert!(accepted.is_some());
        let (admission, _) = reg.admit("b", Role::Minion, &other, &[]).unwrap();
        assert!(matches!(admission, Admission::Refused(_)));
    }

    #[test]
    fn a_record_claiming_another_role_keeps_the_recorded_one() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().public();
        let mut reg = open(dir.path());
        reg.admit("m", Role::Minion, &key, &[]).unwrap();
        reg.accept(&["m".into()], false).unwrap();
        let (admission, _) = reg.admit("m", Role::Operator, &key, &[]).unwrap();
        assert_eq!(admission, Admission::Admitted(Role::Minion));
    }
}
