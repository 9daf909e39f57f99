//! ed25519 key pairs on disk and the fingerprints people compare.
//!
//! A private key file holds the 32-byte secret as 64 hex digits and a newline. It is
//! created with mode 0600 on first start, and a daemon refuses to start when its key is
//! readable or writable by group or others. A fingerprint is the first 128 bits of the
//! SHA-256 of the public key, written as eight groups of four hex digits.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Bytes of a fingerprint (128 bits).
const FINGERPRINT_BYTES: usize = 16;

/// Why a key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "private key {path} is accessible by group or others (mode {mode:o}); \
         run `chmod 600 {path}` and start again"
    )]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("private key {path} is not 64 hex digits; move it away to create a new key")]
    Malformed { path: PathBuf },
    #[error("cannot use private key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A signing key with its public half.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({})", self.public().fingerprint())
    }
}

impl KeyPair {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Self {
        Self {
            signing: SigningKey::from_bytes(&rand::random::<[u8; 32]>()),
        }
    }

    /// Loads the key at `path`, creating it (mode 0600, parent dirs 0700) if missing.
    /// Refuses a key file that group or others can access.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match Self::load(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Self::create(path)
            }
            loaded => loaded,
        }
    }

    /// Loads the existing key at `path`, refusing one that group or others can access.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::LoosePermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let secret = decode_hex::<32>(text.trim()).ok_or_else(|| KeyError::Malformed {
            path: path.to_owned(),
        })?;
        Ok(Self {
            signing: SigningKey::from_bytes(&secret),
        })
    }

    fn create(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let pair = Self::generate();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        writeln!(file, "{}", encode_hex(pair.signing.as_bytes())).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(pair)
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// Signs `domain` followed by `message`.
    pub fn sign(&self, domain: &str, message: &[u8]) -> [u8; 64] {
        self.signing
            .sign(&domain_separated(domain, message))
            .to_bytes()
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// The key from its 32 bytes; `None` if they are not a valid curve point.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 32] = bytes.try_into().ok()?;
        VerifyingKey::from_bytes(bytes).ok().map(Self)
    }

    /// The key from 64 hex digits, as written by [`PublicKey::to_hex`].
    pub fn from_hex(text: &str) -> Option<Self> {
        Self::from_bytes(&decode_hex::<32>(text.trim())?)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn to_hex(&self) -> String {
        encode_hex(&self.to_bytes())
    }

    pub fn fingerprint(&self) -> Fingerprint {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut bytes = [0; FINGERPRINT_BYTES];
        bytes.copy_from_slice(&digest[..FINGERPRINT_BYTES]);
        Fingerprint(bytes)
    }

    /// Checks `signature` over `domain` followed by `message` (strict verification: no
    /// malleable or small-order signatures).
    pub fn verify(&self, domain: &str, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = Signature::from_slice(signature) else {
            return false;
        };
        self.0
            .verify_strict(&domain_separated(domain, message), &signature)
            .is_ok()
    }
}

/// The bytes actually signed: the domain tag, a NUL, then the message, so a signature
/// made for one purpose can never be read as one made for another.
fn domain_separated(domain: &str, message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(domain.len() + 1 + message.len());
    bytes.extend_from_slice(domain.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(message);
    bytes
}

/// The short digest of a public key shown to people: `1a2b:3c4d:…` (8 groups).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; FINGERPRINT_BYTES]);

impl Fingerprint {
    /// Parses a fingerprint as printed, with or without the colons.
    pub fn parse(text: &str) -> Option<Self> {
        let hex: String = text.trim().chars().filter(|&c| c != ':').collect();
        decode_hex::<FINGERPRINT_BYTES>(&hex.to_ascii_lowercase()).map(Self)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pair) in self.0.chunks(2).enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{}", encode_hex(pair))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/minion.key");
        let created = KeyPair::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = KeyPair::load_or_create(&path).unwrap();
        assert_eq!(created.public(), loaded.public());
    }

    #[test]
    fn a_key_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("minion.key");
        KeyPair::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyPair::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn signatures_are_bound_to_their_domain() {
        let pair = KeyPair::generate();
        let sig = pair.sign("dispatch/command/v1", b"payload");
        assert!(
            pair.public()
                .verify("dispatch/command/v1", b"payload", &sig)
        );
        assert!(!pair.public().verify("dispatch/reply/v1", b"payload", &sig));
        assert!(
            !pair
                .public()
                .verify("dispatch/command/v1", b"payloaD", &sig)
        );
        assert!(
            !KeyPair::generate()
                .public()
                .verify("dispatch/command/v1", b"payload", &sig)
        );
    }

    #[test]
    fn fingerprints_print_and_parse() {
        let fp = KeyPair::generate().public().fingerprint();
        let text = fp.to_string();
        assert_eq!(text.len(), 39);
        assert_eq!(Fingerprint::parse(&text), Some(fp));
        assert_eq!(
            Fingerprint::parse(&text.replace(':', "").to_uppercase()),
            Some(fp)
        );
        assert_eq!(Fingerprint::parse("zz"), None);
    }

    #[test]
    fn public_keys_round_trip_through_hex() {
        let key = KeyPair::generate().public();
        assert_eq!(PublicKey::from_hex(&key.to_hex()), Some(key));
    }
}
