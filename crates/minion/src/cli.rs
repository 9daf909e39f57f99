//! The `dispatch-minion` command line: parse, validate into a [`Config`] before any
//! I/O, set up logging, run the daemon, map the outcome to an exit code.
//!
//! Exit codes: 0 after SIGTERM/Ctrl-C; 2 for usage errors, invalid names, a key file
//! with loose permissions, an unusable pin or journal, an external broker without
//! `--master-fingerprint`, and a changed master key; 1 for a failure while running.
//!
//! Standard output carries one line, `minion ID fingerprint FP`, printed at start-up;
//! everything else is logged to standard error (`RUST_LOG` filters, default `info`).

use crate::config::{
    Config, DEFAULT_CONCURRENCY, DEFAULT_DATA_DIR, DEFAULT_MASTER, DEFAULT_MAX_OUTPUT,
    DEFAULT_RECONNECT_MAX, DEFAULT_SKEW, MAX_MAX_OUTPUT, RECONNECT_INITIAL,
};
use crate::daemon::{Minion, MinionError};
use clap::Parser;
use dispatch_common::keys::{Fingerprint, KeyPair};
use dispatch_common::names::check_name;
use dispatch_common::sasl::MAX_GROUPS;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for usage and configuration errors, and a changed master key.
const EXIT_USAGE: u8 = 2;
/// Exit code for a failure while running.
const EXIT_FAILURE: u8 = 1;

/// The dispatch minion: runs the commands the master sends to it.
#[derive(Debug, Parser)]
#[command(name = "dispatch-minion", version, args_override_self = true)]
pub struct Args {
    /// AMQP URL of the master's broker; with `user:password@` it is an external broker
    /// (e.g. RabbitMQ) and --master-fingerprint is required.
    #[arg(long, default_value = DEFAULT_MASTER)]
    pub master: String,
    /// This minion's id (dot-separated segments of a-z, 0-9, '-', '_').
    #[arg(long)]
    pub id: String,
    /// A group of this minion (repeatable); recorded with its key request.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Where the key, the pinned master key and the job journal live.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Fingerprint of the master's key (as `dispatch` prints it); without it the key of
    /// the embedded broker is trusted on first use and pinned.
    #[arg(long, value_name = "FP")]
    pub master_fingerprint: Option<String>,
    /// How far in the future a command's issue time may be (clock skew).
    #[arg(long, default_value = DEFAULT_SKEW, value_parser = humantime::parse_duration)]
    pub skew: Duration,
    /// Jobs run at once.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Longest wait between reconnect attempts.
    #[arg(long, default_value = DEFAULT_RECONNECT_MAX, value_parser = humantime::parse_duration)]
    pub reconnect_max: Duration,
    /// Bytes of stdout, and of stderr, kept per job (plain bytes, or with a KiB/MiB
    /// suffix); output beyond is read and dropped, and the reply says it was truncated.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_OUTPUT, value_parser = parse_bytes)]
    pub max_output: usize,
    /// A TOML file of these options (`id = "web.01"`, `groups = ["web"]`, …); options on
    /// the command line win over the file's.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Why the arguments do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Name(#[from] dispatch_common::names::NameError),
    #[error("too many groups: {0} (at most {MAX_GROUPS})")]
    TooManyGroups(usize),
    #[error("--master-fingerprint '{0}' is not a fingerprint (8 groups of 4 hex digits)")]
    Fingerprint(String),
    #[error(
        "--master {0} names an external broker (it carries user:password), so \
         --master-fingerprint is required: trust on first use of the master key is only \
         allowed on the master's embedded broker, which authenticates every publisher; \
         give the fingerprint of the master's key as the master shows it"
    )]
    FingerprintRequired(String),
    #[error("--reconnect-max must be at least {RECONNECT_INITIAL:?}")]
    ReconnectMax,
}

impl Args {
    /// Checks every value and builds the configuration.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        check_name("id", &self.id)?;
        let mut groups: Vec<String> = Vec::new();
        for group in self.groups {
            check_name("group", &group)?;
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        if groups.len() > MAX_GROUPS {
            return Err(ConfigError::TooManyGroups(groups.len()));
        }
        let master_fingerprint = self
            .master_fingerprint
            .map(|text| Fingerprint::parse(&text).ok_or(ConfigError::Fingerprint(text)))
            .transpose()?;
        let external_broker = dispatch_common::client::has_credentials(&self.master);
        if external_broker && master_fingerprint.is_none() {
            return Err(ConfigError::FingerprintRequired(
                dispatch_common::client::redact(&self.master),
            ));
        }
        if self.reconnect_max < RECONNECT_INITIAL {
            return Err(ConfigError::ReconnectMax);
        }
        Ok(Config {
            master: self.master,
            external_broker,
            id: self.id,
            groups,
            data_dir: self.data_dir,
            master_fingerprint,
            skew: self.skew,
            concurrency: self.concurrency,
            reconnect_max: self.reconnect_max,
            max_output: self.max_output,
        })
    }
}

/// `1048576`, `512KiB`, `1MiB` (also `K`, `KB`, `M`, `MB`, as binary units).
fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize = number
        .parse()
        .map_err(|_| format!("'{text}' is not a number of bytes"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KB" | "KiB" => 1024,
        "M" | "MB" | "MiB" => 1024 * 1024,
        other => return Err(format!("unknown unit '{other}' (use B, KiB or MiB)")),
    };
    let bytes = number
        .checked_mul(scale)
        .ok_or_else(|| format!("'{text}' is too large"))?;
    if bytes > MAX_MAX_OUTPUT {
        return Err(format!(
            "{bytes} bytes is more than {MAX_MAX_OUTPUT}: two captured streams must fit in one reply"
        ));
    }
    Ok(bytes)
}

/// Runs `dispatch-minion`.
pub fn main() -> ExitCode {
    let argv = match crate::config_file::expand(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("dispatch-minion: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let args = Args::parse_from(argv);
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("dispatch-minion: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging();
    // A minion mostly waits: one worker thread serves its connection and its jobs (each
    // job is a child process), and keeps its memory small.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dispatch-minion: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(run(config))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // The minion reports connection failures itself; lapin's own lines would repeat them.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Prints `error` on stderr (as well as in the log) and returns the exit code.
fn fail(code: u8, error: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!("{error}");
    eprintln!("dispatch-minion: {error}");
    ExitCode::from(code)
}

async fn run(config: Config) -> ExitCode {
    let pair = match KeyPair::load_or_create(&config.key_path()) {
        Ok(pair) => pair,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let signal = match dispatch_common::signals::stop_signal() {
        Ok(signal) => signal,
        Err(e) => {
            return fail(
                EXIT_FAILURE,
                &format!("cannot listen for SIGTERM or SIGINT: {e}"),
            );
        }
    };
    let fingerprint = pair.public().fingerprint();
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "minion {} fingerprint {fingerprint}", config.id);
        let _ = stdout.flush();
    }
    tracing::info!(
        id = %config.id,
        groups = ?config.groups,
        %fingerprint,
        "minion {} starting, key fingerprint {fingerprint}",
        config.id
    );
    let minion = match Minion::new(config, pair) {
        Ok(minion) => minion,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        let name = signal.await;
        tracing::info!("{name} received: stopping");
        let _ = stop_tx.send(true);
    });
    let outcome = minion.run(stop_rx).await;
    signals.abort();
    match outcome {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e @ MinionError::MasterKeyChanged(_)) => fail(EXIT_USAGE, &e),
        Err(e) => fail(EXIT_FAILURE, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args =
            Args::try_parse_from(std::iter::once("dispatch-minion").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        args.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_design() {
        let config = parse(&["--id", "web.01"]).unwrap();
        assert_eq!(config.master, DEFAULT_MASTER);
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(config.skew, Duration::from_secs(60));
        assert_eq!(config.concurrency, 4);
        assert_eq!(config.reconnect_max, Duration::from_secs(10));
        assert_eq!(config.max_output, 1024 * 1024);
        assert!(!config.external_broker && config.groups.is_empty());
    }

    #[test]
    fn bad_ids_and_groups_are_refused_with_the_grammar() {
        let err = parse(&["--id", "web.*"]).unwrap_err();
        assert!(err.contains("invalid id"), "{err}");
        let err = parse(&["--id", "web.01", "--group", "Web"]).unwrap_err();
        assert!(err.contains("invalid group"), "{err}");
    }

    #[test]
    fn groups_are_deduplicated() {
        let config = parse(&[
            "--id", "a", "--group", "web", "--group", "eu", "--group", "web",
        ])
        .unwrap();
        assert_eq!(config.groups, vec!["web".to_string(), "eu".to_string()]);
    }

    #[test]
    fn an_external_broker_requires_the_master_fingerprint() {
        let err = parse(&["--id", "a", "--master", "amqp://u:secret@rabbit/"]).unwrap_err();
        assert!(err.contains("--master-fingerprint is required"), "{err}");
        assert!(!err.contains("secret"), "the password is not echoed: {err}");
        let fp = KeyPair::generate().public().fingerprint().to_string();
        let config = parse(&[
            "--id",
            "a",
            "--master",
            "amqp://u:secret@rabbit/",
            "--master-fingerprint",
            &fp,
        ])
        .unwrap();
        assert!(config.external_broker);
        assert_eq!(config.master_fingerprint.unwrap().to_string(), fp);
    }

    #[test]
    fn durations_and_sizes_parse() {
        let config = parse(&[
            "--id",
            "a",
            "--skew",
            "5s",
            "--reconnect-max",
            "1m",
            "--max-output",
            "64KiB",
        ])
        .unwrap();
        assert_eq!(config.skew, Duration::from_secs(5));
        assert_eq!(config.reconnect_max, Duration::from_secs(60));
        assert_eq!(config.max_output, 64 * 1024);
        assert!(parse(&["--id", "a", "--max-output", "100MiB"]).is_err());
        assert!(parse(&["--id", "a", "--concurrency", "0"]).is_err());
        assert!(parse(&["--id", "a", "--master-fingerprint", "zz"]).is_err());
    }
}
