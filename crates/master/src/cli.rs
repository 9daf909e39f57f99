//! The `dispatch` command line: parse into [`Cli`], then run the master daemon or one
//! operator verb.
//!
//! Exit codes: 0 success; 1 the master refused or failed the request (the message says
//! why); 2 usage, key or connection errors.

use crate::client::Operator;
use crate::daemon::MasterConfig;
use crate::layout::{
    DEFAULT_DATA_DIR, DEFAULT_LISTEN, DEFAULT_MASTER_URL, DataDir, LOCAL_OPERATOR_ID,
    personal_operator_id, personal_operator_key,
};
use crate::registry::AutoAccept;
use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use dispatch_broker::User;
use dispatch_common::keys::{Fingerprint, KeyPair};
use dispatch_common::names::check_name;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Salt-like task dispatch over AMQP: the master daemon and the operator's commands.
#[derive(Debug, Parser)]
#[command(name = "dispatch", version)]
pub struct Cli {
    /// The master's broker URL (`amqp://HOST:PORT`; with user:password@ for RabbitMQ).
    #[arg(long, global = true, default_value = DEFAULT_MASTER_URL)]
    pub master: String,
    /// The master's data dir: the daemon's state, and where the CLI finds the local
    /// operator key on the master host.
    #[arg(long, global = true, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the master daemon.
    Master(MasterArgs),
    /// Manage the keys of minions and operators (like salt-key).
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Args)]
pub struct MasterArgs {
    /// Address the embedded broker listens on (port 0 picks a free port).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Use this external broker (e.g. RabbitMQ) instead of the embedded one.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// Accept every new key without an operator (off by default).
    #[arg(long)]
    pub auto_accept: bool,
    /// Accept new keys with this fingerprint without an operator (repeatable).
    #[arg(long = "auto-accept-fingerprint", value_name = "FP", value_parser = parse_fingerprint)]
    pub auto_accept_fingerprints: Vec<Fingerprint>,
    /// A PLAIN/AMQPLAIN user of the embedded broker for standard AMQP clients, with
    /// full rights, as NAME:PASSWORD (repeatable; none by default).
    #[arg(long = "plain-user", value_name = "NAME:PASSWORD", value_parser = dispatch_broker::cli::parse_user)]
    pub plain_users: Vec<User>,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List every key with its state and fingerprint.
    List {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        out: Output,
    },
    /// Accept pending keys: the minion's queue is declared at once.
    Accept {
        /// Ids to accept.
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Accept every pending key.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Reject a key: it can no longer connect.
    Reject { id: String },
    /// Forget every key of an id, so it can ask again.
    Delete { id: String },
    /// Show this host's key fingerprints (operator, and master on the master host).
    Fingerprint,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

fn parse_fingerprint(text: &str) -> Result<Fingerprint, String> {
    Fingerprint::parse(text).ok_or_else(|| {
        format!(
            "'{text}' is not a fingerprint (32 hex digits, as `dispatch key fingerprint` prints)"
        )
    })
}

/// The whole `dispatch` program.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Master(_) => "info",
        // The CLI reports failures itself, in one line; lapin's own logs would repeat them.
        _ => "warn,lapin=off",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dispatch: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dispatch: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = DataDir::new(&cli.data_dir);
    match cli.command {
        Command::Master(args) => {
            let auto_accept = match (args.auto_accept, args.auto_accept_fingerprints) {
                (true, _) => AutoAccept::All,
                (false, fps) if !fps.is_empty() => AutoAccept::Fingerprints(fps),
                _ => AutoAccept::Off,
            };
            let config = MasterConfig {
                listen: args.listen,
                data_dir,
                broker_url: args.broker,
                auto_accept,
                plain_users: args.plain_users,
            };
            crate::daemon::run(config, dispatch_broker::cli::shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Key(KeyCommand::Fingerprint) => {
            let operator = operator(&data_dir)?;
            println!(
                "operator {}: {}",
                operator.id,
                operator.key.public().fingerprint()
            );
            if let Ok(master) = KeyPair::load(&data_dir.master_key()) {
                println!("master: {}", master.public().fingerprint());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Key(verb) => {
            let operator = operator(&data_dir)?;
            crate::key_cmd::run(&cli.master, operator, verb).await
        }
    }
}

/// The operator key the CLI signs with: the local operator key when the master's data
/// dir is readable (on the master host), else the personal key (created on first use).
fn operator(data_dir: &DataDir) -> anyhow::Result<Operator> {
    let local = data_dir.operator_key();
    if std::fs::File::open(&local).is_ok() {
        return Ok(Operator {
            id: LOCAL_OPERATOR_ID.to_owned(),
            key: KeyPair::load_or_create(&local)?,
        });
    }
    let path = personal_operator_key()
        .context("cannot find a home for the operator key: set HOME or XDG_CONFIG_HOME")?;
    let id = personal_operator_id();
    check_name("operator id", &id)?;
    Ok(Operator {
        id,
        key: KeyPair::load_or_create(&path)?,
    })
}
