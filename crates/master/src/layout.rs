//! The master's data dir, and the defaults of the master and the CLI: one place for
//! every path and identity the master and its operators agree on.
//!
//! ```text
//! DIR/master.key      the master's key: signs commands and RPC responses, and is the
//!                     embedded broker's identity
//! DIR/operator.key    the local operator's key, accepted from the start: whoever can
//!                     read DIR is an operator on the master host (as with salt-key)
//! DIR/keys/…          the key registry (see [`crate::registry`])
//! DIR/jobs.sqlite     the job store (see [`crate::store`])
//! DIR/broker/         the embedded broker's store
//! ```

use std::path::{Path, PathBuf};

/// The master's data dir when `--data-dir` is not given.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/dispatch";
/// Where `dispatch master` listens by default: every interface, the AMQP port.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:5672";
/// The master's URL for the CLI when `--master` is not given.
pub const DEFAULT_MASTER_URL: &str = dispatch_common::DEFAULT_MASTER_URL;
/// How long jobs are kept when `--keep-jobs` is not given.
pub const DEFAULT_KEEP_JOBS: &str = "7d";
/// The id the master signs as and connects to its broker with.
pub const MASTER_ID: &str = "master";
/// The id of the local operator key in the master's data dir.
pub const LOCAL_OPERATOR_ID: &str = "operator.local";
/// Environment variable that overrides a personal operator key's id.
pub const OPERATOR_ID_VAR: &str = "DISPATCH_OPERATOR_ID";

/// Paths inside a master data dir.
#[derive(Debug, Clone)]
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(path: &Path) -> Self {
        Self(path.to_owned())
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    pub fn master_key(&self) -> PathBuf {
        self.0.join("master.key")
    }

    pub fn operator_key(&self) -> PathBuf {
        self.0.join("operator.key")
    }

    pub fn keys(&self) -> PathBuf {
        self.0.join("keys")
    }

    pub fn jobs(&self) -> PathBuf {
        self.0.join("jobs.sqlite")
    }

    pub fn broker(&self) -> PathBuf {
        self.0.join("broker")
    }
}

/// A personal operator key, for operators away from the master host:
/// `$XDG_CONFIG_HOME/dispatch/operator.key` or `~/.config/dispatch/operator.key`.
pub fn personal_operator_key() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(config.join("dispatch").join("operator.key"))
}

/// Where a personal operator pins the master's key: beside the personal key.
pub fn personal_master_pin() -> Option<PathBuf> {
    personal_operator_key().map(|key| key.with_file_name("master.pub"))
}

/// The id of a personal operator key: `$DISPATCH_OPERATOR_ID`, or `operator.<user>`.
pub fn personal_operator_id() -> String {
    if let Ok(id) = std::env::var(OPERATOR_ID_VAR) {
        return id;
    }
    let user: String = std::env::var("USER")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let user = user.trim_start_matches(['-', '_']);
    if user.is_empty() {
        "operator.anonymous".to_owned()
    } else {
        format!("operator.{user}")
    }
}
