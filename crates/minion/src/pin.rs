//! The master key this minion trusts, and its pin file `DATA_DIR/master.pub` (the
//! public key as 64 hex digits and a newline).
//!
//! The trust anchor is, in order: `--master-fingerprint` (a command's signer must have
//! that fingerprint; its key is then pinned), or the pin file (the embedded broker must
//! present that key in the SASL challenge, and commands must be signed with it), or
//! nothing yet: trust on first use, where the key the embedded broker presents at the
//! first successful login is pinned. Trust on first use is refused with an external
//! broker (see [`crate::cli`]), which does not speak for the master.

use crate::verify::MasterKey;
use dispatch_common::keys::{Fingerprint, PublicKey};
use std::path::{Path, PathBuf};

/// Why the pin file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("pinned master key {path} is not 64 hex digits; remove it to pin the master again")]
    Malformed { path: PathBuf },
    #[error("pinned master key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads the pin file; `None` when there is none.
pub fn load(path: &Path) -> Result<Option<PublicKey>, PinError> {
    match std::fs::read_to_string(path) {
        Ok(text) => PublicKey::from_hex(&text)
            .map(Some)
            .ok_or_else(|| PinError::Malformed {
                path: path.to_owned(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PinError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the pin file durably ([`dispatch_common::durable::replace`]).
pub fn save(path: &Path, key: &PublicKey) -> Result<(), PinError> {
    dispatch_common::durable::replace(path, format!("{}\n", key.to_hex()).as_bytes()).map_err(
        |source| PinError::Io {
            path: path.to_owned(),
            source,
        },
    )
}

/// What the minion trusts as the master, and where it pins it.
#[derive(Debug, Clone)]
pub struct Trust {
    path: PathBuf,
    pinned: Option<PublicKey>,
    fingerprint: Option<Fingerprint>,
}

impl Trust {
    /// Loads the pin at `path`. With `fingerprint`, a pin of another key is ignored (with
    /// a warning) and replaced by the first command signed with the right key.
    pub fn load(path: &Path, fingerprint: Option<Fingerprint>) -> Result<Self, PinError> {
        let mut pinned = load(path)?;
        if let (Some(fp), Some(key)) = (fingerprint, pinned)
            && key.fingerprint() != fp
        {
            tracing::warn!(
                pin = %path.display(),
                pinned = %key.fingerprint(),
                given = %fp,
                "the pinned master key does not have the --master-fingerprint given; \
                 following the fingerprint"
            );
            pinned = None;
        }
        Ok(Self {
            path: path.to_owned(),
            pinned,
            fingerprint,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pinned(&self) -> Option<PublicKey> {
        self.pinned
    }

    /// The key the broker must present in the SASL challenge: the pin, unless the trust
    /// comes from a fingerprint (a standalone broker has a key of its own).
    pub fn expected_broker(&self) -> Option<PublicKey> {
        self.fingerprint.is_none().then_some(self.pinned).flatten()
    }

    /// The key commands must be signed with; `None` before trust on first use.
    pub fn master_key(&self) -> Option<MasterKey> {
        self.pinned
            .map(MasterKey::Pinned)
            .or(self.fingerprint.map(MasterKey::Fingerprint))
    }

    /// Pins `key` (logged as "pinned master key FP") unless it is already pinned.
    pub fn pin(&mut self, key: PublicKey) -> Result<(), PinError> {
        if self.pinned == Some(key) {
            return Ok(());
        }
        save(&self.path, &key)?;
        self.pinned = Some(key);
        tracing::info!(
            fingerprint = %key.fingerprint(),
            pin = %self.path.display(),
            "pinned master key {}",
            key.fingerprint()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_common::keys::KeyPair;

    #[test]
    fn a_pin_round_trips_and_is_expected_from_the_broker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.pub");
        let key = KeyPair::generate().public();
        let mut trust = Trust::load(&path, None).unwrap();
        assert_eq!(trust.master_key(), None, "trust on first use");
        trust.pin(key).unwrap();
        let trust = Trust::load(&path, None).unwrap();
        assert_eq!(trust.pinned(), Some(key));
        assert_eq!(trust.expected_broker(), Some(key));
        assert_eq!(trust.master_key(), Some(MasterKey::Pinned(key)));
    }

    #[test]
    fn a_fingerprint_overrides_a_pin_of_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.pub");
        save(&path, &KeyPair::generate().public()).unwrap();
        let fp = KeyPair::generate().public().fingerprint();
        let trust = Trust::load(&path, Some(fp)).unwrap();
        assert_eq!(trust.master_key(), Some(MasterKey::Fingerprint(fp)));
        assert_eq!(trust.expected_broker(), None);
    }

    #[test]
    fn a_malformed_pin_says_how_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.pub");
        std::fs::write(&path, "nope\n").unwrap();
        let err = Trust::load(&path, None).unwrap_err().to_string();
        assert!(err.contains("remove it"), "{err}");
    }
}
