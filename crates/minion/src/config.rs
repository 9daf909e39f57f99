//! Every constant of the minion in one place, and the validated [`Config`] the daemon
//! runs with (built from the command line by [`crate::cli`], before any I/O).

use dispatch_common::keys::Fingerprint;
use std::path::PathBuf;
use std::time::Duration;

/// `--master` when not given: the embedded broker of a master on this host.
pub const DEFAULT_MASTER: &str = dispatch_common::DEFAULT_MASTER_URL;
/// `--data-dir` when not given.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/dispatch-minion";
/// `--skew` when not given: how far in the future a command's issue time may be.
pub const DEFAULT_SKEW: &str = "60s";
/// `--concurrency` when not given: jobs run at once (and the consumer's prefetch).
pub const DEFAULT_CONCURRENCY: u16 = 4;
/// `--reconnect-max` when not given: the cap of the reconnect backoff.
pub const DEFAULT_RECONNECT_MAX: &str = "10s";
/// `--max-output` when not given: bytes of stdout, and of stderr, captured per job.
pub const DEFAULT_MAX_OUTPUT: usize = 1024 * 1024;
/// Most bytes of output per stream a minion may be told to capture: two streams must
/// fit in one signed reply under the envelope limit.
pub const MAX_MAX_OUTPUT: usize = dispatch_common::envelope::MAX_ENVELOPE_BYTES / 2 - 64 * 1024;

// Two captured streams fit in one signed reply, and the default is allowed.
const _: () = assert!(2 * MAX_MAX_OUTPUT < dispatch_common::envelope::MAX_ENVELOPE_BYTES);
const _: () = assert!(DEFAULT_MAX_OUTPUT <= MAX_MAX_OUTPUT);

/// The private key file in the data dir.
pub const KEY_FILE: &str = "minion.key";
/// The pinned master public key in the data dir (64 hex digits).
pub const PIN_FILE: &str = "master.pub";
/// The job journal in the data dir.
pub const JOURNAL_FILE: &str = "journal";
/// The folder of results kept across a stop ([`crate::kept`]) in the data dir.
pub const KEPT_RESULTS_DIR: &str = "kept-results";

/// First reconnect delay; it doubles up to `--reconnect-max`, with jitter.
pub const RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// How long one connection attempt (TCP, SASL, tune, open) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A session that lasted this long resets the reconnect backoff (a shorter one does
/// not, so a session failing right after its start cannot become a hot loop).
pub const STABLE_SESSION: Duration = Duration::from_secs(5);
/// Interval of the `heartbeat` presence events.
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(30);

/// On a job timeout, the time between SIGTERM and SIGKILL to its process group.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// Once a job's leader has exited, reading its pipes stops after they stay quiet this
/// long (a background grandchild may hold them open).
pub const PIPE_QUIET_GRACE: Duration = Duration::from_millis(200);
/// Once a job's leader has exited, reading its pipes stops after this long even if a
/// grandchild keeps writing.
pub const PIPE_DRAIN_MAX: Duration = Duration::from_secs(5);
/// On SIGTERM/Ctrl-C, how long running jobs may go on before they are killed and
/// reported interrupted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Largest journal read at start-up; it is compacted at every start and every
/// [`JOURNAL_COMPACT_EVERY`] appends, so a bigger one is damaged.
pub const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;
/// Longest journal line; a longer one is corrupt and skipped.
pub const MAX_JOURNAL_LINE: usize = 1024;
/// Appends after which the journal is compacted while the minion runs.
pub const JOURNAL_COMPACT_EVERY: u64 = 10_000;

/// Longest reason in a `Refused` reply (AMQP reply texts stop at 255 bytes; logs and
/// the master's summaries show it on one line).
pub const MAX_REFUSAL_BYTES: usize = 150;
/// Sessions in which one reply may fail to publish before it is set aside (logged as
/// an error) so that the minion goes on consuming.
pub const MAX_REPLY_ATTEMPTS: u32 = 5;

/// The validated configuration of one minion.
#[derive(Debug, Clone)]
pub struct Config {
    /// The AMQP URL of the master's broker.
    pub master: String,
    /// The URL carries `user:password`: an external broker with PLAIN authentication.
    pub external_broker: bool,
    pub id: String,
    pub groups: Vec<String>,
    pub data_dir: PathBuf,
    pub master_fingerprint: Option<Fingerprint>,
    pub skew: Duration,
    pub concurrency: u16,
    pub reconnect_max: Duration,
    pub max_output: usize,
}

impl Config {
    pub fn key_path(&self) -> PathBuf {
        self.data_dir.join(KEY_FILE)
    }

    pub fn pin_path(&self) -> PathBuf {
        self.data_dir.join(PIN_FILE)
    }

    pub fn journal_path(&self) -> PathBuf {
        self.data_dir.join(JOURNAL_FILE)
    }

    pub fn kept_results_dir(&self) -> PathBuf {
        self.data_dir.join(KEPT_RESULTS_DIR)
    }
}
