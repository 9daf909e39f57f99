//! The `dispatch-broker` command line: parse, bind, print the ready line, serve until
//! SIGTERM or Ctrl-C.

use crate::config::{
    BrokerConfig, DEFAULT_FRAME_MAX, DEFAULT_HEARTBEAT_SECS, DEFAULT_MAX_MESSAGE_SIZE, User,
};
use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// A small, fast AMQP 0-9-1 broker.
#[derive(Debug, Parser)]
#[command(name = "dispatch-broker", version)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = dispatch_common::DEFAULT_BROKER_LISTEN)]
    pub listen: SocketAddr,
    /// Directory for durable state.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A PLAIN/AMQPLAIN user as NAME:PASSWORD (repeatable).
    #[arg(long = "user", value_name = "NAME:PASSWORD", value_parser = parse_user)]
    pub users: Vec<User>,
    /// A PLAIN/AMQPLAIN user with a dispatch minion's rights only, as ID:PASSWORD: it may
    /// consume `dispatch.minion.ID` and publish replies and its own events (repeatable).
    #[arg(long = "minion-user", value_name = "ID:PASSWORD", value_parser = parse_minion_user)]
    pub minion_users: Vec<User>,
    /// Do not accept guest/guest (which is otherwise accepted from loopback only).
    #[arg(long)]
    pub no_guest: bool,
    /// Largest message body accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_SIZE)]
    pub max_message_size: u64,
    /// Bytes of messages in memory above which publishers are blocked
    /// (default: 40% of physical memory).
    #[arg(long)]
    pub memory_limit: Option<usize>,
    /// Free disk space under --data-dir below which publishers are blocked until space is
    /// freed, e.g. 50MB or 2GiB (0 turns the check off).
    #[arg(long, default_value = "50MB", value_parser = crate::config::parse_size)]
    pub disk_free_limit: u64,
    /// Heartbeat interval proposed to clients, in seconds (0 disables).
    #[arg(long, default_value_t = DEFAULT_HEARTBEAT_SECS)]
    pub heartbeat: u16,
    /// Largest frame proposed to clients, in bytes (at least 4096).
    #[arg(long, default_value_t = DEFAULT_FRAME_MAX, value_parser = clap::value_parser!(u32).range(4096..))]
    pub frame_max: u32,
    /// Longest the broker polls for input before it sleeps after a request or a reply,
    /// e.g. 100us: lower latency for request/reply traffic on machines whose idle CPUs
    /// wake slowly, at the cost of CPU (0 turns it off).
    #[arg(long, default_value = crate::config::DEFAULT_SPIN_LIMIT, value_parser = humantime::parse_duration)]
    pub spin: std::time::Duration,
}

/// Parses a `NAME:PASSWORD` user (full permissions, accepted from anywhere).
pub fn parse_user(s: &str) -> Result<User, String> {
    let (name, password) = s
        .split_once(':')
        .filter(|(n, p)| !n.is_empty() && !p.is_empty())
        .ok_or_else(|| format!("expected NAME:PASSWORD, got {s:?}"))?;
    Ok(User {
        name: name.to_owned(),
        password: password.to_owned(),
        loopback_only: false,
        permissions: crate::Permissions::Full,
    })
}

/// Parses an `ID:PASSWORD` user with the rights of minion ID.
pub fn parse_minion_user(s: &str) -> Result<User, String> {
    let user = parse_user(s).map_err(|_| format!("expected ID:PASSWORD, got {s:?}"))?;
    dispatch_common::names::check_name("id", &user.name).map_err(|e| e.to_string())?;
    Ok(User {
        permissions: crate::Permissions::Minion {
            id: user.name.clone(),
        },
        ..user
    })
}

impl Args {
    pub fn config(&self) -> BrokerConfig {
        let mut users = self.users.clone();
        users.extend(self.minion_users.iter().cloned());
        if !self.no_guest && !users.iter().any(|u| u.name == "guest") {
            users.push(User::guest());
        }
        BrokerConfig {
            users,
            frame_max: self.frame_max,
            heartbeat_secs: self.heartbeat,
            max_message_size: self.max_message_size,
            data_dir: self.data_dir.clone(),
            memory_limit: self
                .memory_limit
                .unwrap_or_else(crate::config::default_memory_limit),
            disk_free_limit: self.disk_free_limit,
            ..BrokerConfig::default()
        }
    }
}

/// The whole `dispatch-broker` program.
pub fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dispatch-broker: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // One thread serves every connection (the store has its own): on a few cores shared
    // with clients, handing work between runtime threads costs more CPU per message than
    // it gains (measured with dispatch-bench; see docs/BENCHMARKS.md). Under sustained
    // load it pauses briefly before parking, so wake-ups carry several messages each;
    // after a request or a reply it spins briefly instead (crate::spin).
    crate::spin::enable(args.spin);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::coalesce::before_park)
        .on_thread_unpark(crate::coalesce::after_unpark)
        .build()
        .context("starting the runtime")?;
    let config = args.config();
    if config.data_dir.is_none() {
        tracing::warn!(
            "no --data-dir: durable exchanges, queues and persistent messages are kept in memory only"
        );
    }
    let broker = crate::Broker::open(config).context("opening the data directory")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let shutdown = shutdown_signal();
        tracing::info!(%addr, "dispatch-broker {} ready", dispatch_common::VERSION);
        println!("{}{addr}", dispatch_common::READY_LINE_PREFIX);
        crate::serve(listener, std::sync::Arc::new(broker), shutdown).await;
        Ok(())
    })
}

/// Completes on SIGTERM or Ctrl-C. The handlers are installed by this call, before the
/// caller says it is ready ([`dispatch_common::signals`]); without them (an error at
/// installation, said in the log) it never completes and the default actions apply.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let signal = dispatch_common::signals::stop_signal();
    async move {
        match signal {
            Ok(signal) => {
                let name = signal.await;
                tracing::info!("{name} received");
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM or SIGINT: {e}");
                std::future::pending::<()>().await;
            }
        }
    }
}
