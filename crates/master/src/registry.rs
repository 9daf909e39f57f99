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
            let record = KeyRecord::new(id, role, key, groups);
            if self.auto_accepts(&fingerprint) {
                tracing::info!(%id, %fingerprint, "auto-accepted new key");
                self.store(KeyState::Accepted, record.clone())?;
                return Ok((Admission::Admitted(role), Some(record)));
            }
            tracing::warn!(%id, %fingerprint, ?role, "new key is pending");
            self.store(KeyState::Pending, record)?;
            return Ok((Admission::Refused(pending_text(id, &fingerprint)), None));
        };
        if record.key != key.to_hex() {
            tracing::error!(
                %id, presented = %fingerprint, on_record = %record.fingerprint,
                "DENIED: a known id presented another key; it may be an impostor"
            );
            let impostor = KeyRecord::new(id, role, key, groups);
            self.write(KeyState::Denied, &impostor)?;
            self.denied.insert(id.to_owned(), impostor);
            return Ok((Admission::Refused(denied_text(id, &fingerprint)), None));
        }
        let mut record = record;
        record.last_seen_ms = now_ms();
        let admission = match state {
            KeyState::Accepted => Admission::Admitted(record.role),
            KeyState::Pending => Admission::Refused(pending_text(id, &fingerprint)),
            KeyState::Rejected => Admission::Refused(format!(
                "the key of '{id}' was rejected by an operator; \
                 `dispatch key delete {id}` on the master lets it ask again"
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

    /// Accepts the pending keys of `ids` (every pending key when `ids` is empty and `all`).
    /// Returns the records accepted.
    pub fn accept(&mut self, ids: &[String], all: bool) -> Result<Vec<KeyRecord>, RegistryError> {
        let ids: Vec<String> = if all {
            self.ids_in(KeyState::Pending)
        } else {
            ids.to_vec()
        };
        let mut accepted = Vec::new();
        for id in &ids {
            check_name("id", id)?;
            let record = self.take(id, &[KeyState::Pending, KeyState::Rejected])?;
            self.store(KeyState::Accepted, record.clone())?;
            accepted.push(record);
        }
        Ok(accepted)
    }

    /// Rejects the pending or accepted key of `id`.
    pub fn reject(&mut self, id: &str) -> Result<KeyRecord, RegistryError> {
        check_name("id", id)?;
        let record = self.take(id, &[KeyState::Pending, KeyState::Accepted])?;
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

    /// Removes `id` from one of `states`, or says where it is instead.
    fn take(&mut self, id: &str, states: &[KeyState]) -> Result<KeyRecord, RegistryError> {
        match self.records.get(id) {
            Some((state, _)) if states.contains(state) => {
                let (state, record) = self.records.remove(id).expect("present");
                self.remove_file(state, id)?;
                Ok(record)
            }
            _ => Err(self.not_found(id, states[0].as_str())),
        }
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

    fn store(&mut self, state: KeyState, record: KeyRecord) -> Result<(), RegistryError> {
        if let Some((old, _)) = self.records.get(&record.id)
            && *old != state
        {
            self.remove_file(*old, &record.id)?;
        }
        self.write(state, &record)?;
        self.records.insert(record.id.clone(), (state, record));
        Ok(())
    }

    fn folder(&self, state: KeyState) -> PathBuf {
        self.dir.join(state.as_str())
    }

    fn path(&self, state: KeyState, id: &str) -> PathBuf {
        self.folder(state).join(format!("{id}.json"))
    }

    fn write(&self, state: KeyState, record: &KeyRecord) -> Result<(), RegistryError> {
        let path = self.path(state, &record.id);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(record).expect("records always encode") + "\n";
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
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

fn pending_text(id: &str, fingerprint: &Fingerprint) -> String {
    format!(
        "the key of '{id}' (fingerprint {fingerprint}) is pending; on the master, compare the \
         fingerprint and run `dispatch key accept {id}`"
    )
}

fn denied_text(id: &str, fingerprint: &Fingerprint) -> String {
    format!(
        "the key presented for '{id}' (fingerprint {fingerprint}) is not the one on record; \
         denied. If '{id}' was re-keyed on purpose, run `dispatch key delete {id}` on the \
         master and let it ask again"
    )
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
        let (admission, _) = reg.admit("web.01", Role::Minion, &key, &[]).unwrap();
        assert_eq!(admission, Admission::Admitted(Role::Minion));
        assert_eq!(reg.accepted("web.01").unwrap().groups, groups);
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
