//! The `dispatch` command line: parse into [`Cli`], then run the master daemon or one
//! operator verb. Verbs that need checking beyond clap (`run`, `job`, `jobs`, `events`,
//! `schedule`) turn their arguments into a validated plan before any I/O; `run` and
//! `schedule add` share their targeting and execution options ([`RunOptions`]).
//!
//! Exit codes ([`exit`]):
//! - 0: success (`dispatch events`: stopped by Ctrl-C or a closed stdout);
//! - 1: the master refused or failed the request (the message says why; for
//!   `dispatch job`, also an unknown or ambiguous job id; for `dispatch schedule`, an
//!   invalid cron expression, an unknown schedule or a name already taken), or, for
//!   `dispatch run` and `dispatch job`, a minion returned non-zero, was killed, could
//!   not start the command, refused it or was interrupted;
//! - 2: usage, key or connection errors (`dispatch events`: the connection dropped);
//! - 3 (`dispatch run`, `dispatch job`): a target did not return: it timed out, is
//!   offline (the command waits in its queue until the TTL), expired there, is still
//!   running, or was not started by a rolling batch; the output names them with the
//!   job id. This wins over 1;
//! - 130: Ctrl-C stopped `dispatch run` waiting; the job goes on.

use crate::client::{MasterTrust, Operator};
use crate::daemon::MasterConfig;
use crate::layout::{
    DEFAULT_DATA_DIR, DEFAULT_KEEP_JOBS, DEFAULT_LISTEN, DEFAULT_MASTER_URL, DataDir,
    LOCAL_OPERATOR_ID, personal_master_pin, personal_operator_id, personal_operator_key,
};
use crate::registry::AutoAccept;
use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use dispatch_broker::User;
use dispatch_common::keys::{Fingerprint, KeyPair};
use dispatch_common::names::check_name;
use dispatch_common::rpc::{Batch, MinionState};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The exit codes of `dispatch` (see the module doc).
pub mod exit {
    /// Everything asked for was done; every target returned success.
    pub const OK: u8 = 0;
    /// The master refused the request, or a target returned a failure.
    pub const FAILED: u8 = 1;
    /// Usage, key or connection errors.
    pub const USAGE: u8 = 2;
    /// A target of `dispatch run` or `dispatch job` did not return (timed out, offline,
    /// not started, still running, expired).
    pub const DID_NOT_RETURN: u8 = 3;
    /// Ctrl-C stopped the wait (128 + SIGINT).
    pub const INTERRUPTED: u8 = 130;
}

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
    /// The master key's fingerprint, when the CLI cannot read the master's data dir or
    /// learn the key from the embedded broker (required with an external broker).
    #[arg(long, global = true, value_name = "FP", value_parser = parse_fingerprint)]
    pub master_fingerprint: Option<Fingerprint>,
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
    /// Run a command on the minions a target names and print their returns.
    #[command(
        override_usage = "dispatch run [OPTIONS] TARGET CMD [ARGS]...\n       \
                          dispatch run [OPTIONS] -G NAME CMD [ARGS]...\n       \
                          dispatch run [OPTIONS] -L ID,ID,... CMD [ARGS]...",
        after_long_help = RUN_AFTER_HELP
    )]
    Run(RunArgs),
    /// List the accepted minions: groups, up or down, last seen, version.
    Minions {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        out: Output,
    },
    /// Show one job: who ran what, and every targeted minion's state and output.
    #[command(after_long_help = JOB_AFTER_HELP)]
    Job(JobArgs),
    /// List recent jobs, newest first, with how many minions are in each state.
    #[command(after_long_help = JOBS_AFTER_HELP)]
    Jobs(JobsArgs),
    /// Print job and minion events as they happen, until Ctrl-C.
    #[command(after_long_help = EVENTS_AFTER_HELP)]
    Events(EventsArgs),
    /// Run commands on a cron schedule: add, list, show, remove, pause, resume, run-now.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
}

const JOB_AFTER_HELP: &str = "\
JID is the whole job id, or at least 8 hex digits of its start or end
(`dispatch jobs` lists them).

States: succeeded, failed, refused, interrupted (returned); running, timed_out
(connected when published, no return yet / within the exec timeout); queued,
expired (offline when published; the command waits in its queue / expired there).

Exit codes:
  0  every targeted minion succeeded
  1  a minion failed, refused or was interrupted; or no such job, or JID is ambiguous
  2  usage or connection error
  3  a minion has not returned (running, timed_out, queued, expired)";

const JOBS_AFTER_HELP: &str = "\
Examples:
  dispatch jobs --since 12h
  dispatch jobs --target 'web.*' --status failed
  dispatch jobs --limit 100 --out json";

const EVENTS_AFTER_HELP: &str = "\
Event keys, which --filter matches as an AMQP topic pattern ('*' one segment,
'#' any depth):
  job.JID               a job was published (JID: 32 hex digits)
  job.JID.MINION        a minion's return was recorded
  minion.ID.KIND        a minion announced itself: up, heartbeat or down

Examples:
  dispatch events --filter 'job.#'
  dispatch events --filter 'minion.#.down'
  dispatch events --out json | head -n 5

Exit codes: 0 after Ctrl-C (or when stdout is closed), 2 when the connection drops.";

/// `dispatch job JID …` as typed; [`crate::job_cmd::plan`] checks it.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job id, or at least 8 hex digits of its start or end.
    #[arg(value_name = "JID")]
    pub jid: String,
    /// Wait until every targeted minion has returned or expired (at most --timeout).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "DUR", default_value = "5m", requires = "wait", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[arg(long, value_enum, default_value_t = ViewOutput::Text)]
    pub out: ViewOutput,
}

/// `dispatch jobs …` as typed; [`crate::jobs_cmd::plan`] checks it.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// At most this many jobs.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::history::MAX_LIMIT)))]
    pub limit: u32,
    /// Only jobs submitted within this long (e.g. 1h, 2d).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Only jobs whose target, as typed, this topic pattern covers (e.g. 'web.*').
    #[arg(long, value_name = "PATTERN")]
    pub target: Option<String>,
    /// Only jobs with at least one minion in this state.
    #[arg(long, value_name = "STATE", value_parser = MinionState::parse)]
    pub status: Option<MinionState>,
    #[arg(long, value_enum, default_value_t = ViewOutput::Text)]
    pub out: ViewOutput,
}

/// `dispatch events …` as typed; [`crate::events_cmd::plan`] checks it.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events whose key this topic pattern matches (see below).
    #[arg(long, value_name = "PATTERN", default_value = "#")]
    pub filter: String,
    /// Text lines, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub out: Output,
}

const RUN_AFTER_HELP: &str = "\
Targets:
  '*'              every accepted minion
  web.*  db.#      a topic pattern over dotted ids ('*' one segment, '#' any depth)
  web.01           one minion
  -G web           every minion of a group (then there is no TARGET)
  -L a,b,c         these minions (then there is no TARGET)

Everything after CMD is passed to it verbatim; put options before TARGET, and use
`--` before a CMD that starts with '-'.

Examples:
  dispatch run 'web.*' uptime
  dispatch run -G web -- ls -la /tmp
  dispatch run --shell -L web.01,db.01 'df -h | grep /var'
  dispatch run --batch 25% --out json '*' systemctl restart app

Exit codes:
  0    every target returned success
  1    a target returned non-zero, was killed, could not start the command, refused it
       or was interrupted (or the master refused the request)
  2    usage or connection error
  3    a target did not return: timed out, offline (queued until --ttl) or not started
       by a rolling batch; `dispatch job JID` shows its returns later
  130  Ctrl-C: stopped waiting; the job goes on";

/// `dispatch run [OPTIONS] TARGET CMD [ARGS]…` as typed; [`crate::run_cmd::plan`] checks
/// it and turns it into a request.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub options: RunOptions,
    /// Do not wait: print the job id and exit 0 (`dispatch job JID` shows the returns).
    #[arg(long = "async")]
    pub detach: bool,
    /// How returns are printed: text as they arrive, JSON lines as they arrive, or a
    /// YAML list at the end.
    #[arg(long, value_enum, default_value_t = RunOutput::Text)]
    pub out: RunOutput,
}

/// What to run where: the targeting and execution options and the words of every verb
/// that runs a command (`dispatch run`, `dispatch schedule add`), checked by
/// [`crate::run_cmd::run_spec`].
#[derive(Debug, Args)]
pub struct RunOptions {
    /// Every minion of this group; the first positional is then CMD.
    #[arg(short = 'G', long, value_name = "NAME", conflicts_with = "list")]
    pub group: Option<String>,
    /// These minions, comma-separated; the first positional is then CMD.
    #[arg(short = 'L', long, value_name = "ID,ID,…")]
    pub list: Option<String>,
    /// How long to wait for the online minions' returns.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How long the command waits in the queue of an offline minion.
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// How long the command may run on a minion before its process group is killed.
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = humantime::parse_duration)]
    pub exec_timeout: Duration,
    /// Run CMD through `/bin/sh -c` (the minion joins CMD and ARGS with spaces).
    #[arg(long)]
    pub shell: bool,
    /// Set an environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// The working directory of the command on the minions (an absolute path).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Rolling batches: at most N (or N% of the targets) online minions at once.
    #[arg(long, value_name = "N|N%", value_parser = Batch::parse)]
    pub batch: Option<Batch>,
    /// TARGET, then CMD and its ARGS (no TARGET with -G or -L).
    #[arg(
        value_name = "TARGET CMD [ARGS]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub words: Vec<String>,
}

const SCHEDULE_ADD_AFTER_HELP: &str = "\
EXPR is read on the wall clock of ZONE (default UTC):
  '*/5 * * * *'      5 fields: minute hour day-of-month month day-of-week
  '*/10 * * * * *'   6 fields: seconds first
  @hourly @daily @weekly @monthly @yearly (@midnight = @daily)
A daylight-saving change never makes a firing happen twice; a fixed time that falls in
a skipped hour runs once, just after it.

TARGET, CMD and the run options are those of `dispatch run` (see `dispatch run --help`):
options come before TARGET, everything after CMD is passed to it verbatim. Each firing
is an ordinary job whose origin is the schedule's name (`dispatch jobs`).

Examples:
  dispatch schedule add backup.db --cron '0 2 * * *' --tz Europe/Berlin -G db -- pg_dump -Fc app
  dispatch schedule add health --cron '*/5 * * * *' --splay 30s 'web.*' curl -fsS localhost/health
  dispatch schedule add sweep --cron @hourly --overlap allow --shell '*' 'find /tmp -mtime +7 -delete'

Exit codes:
  0  added; the next three fire times are printed
  1  the master refused it (invalid or never-firing EXPR, existing NAME)
  2  usage or connection error (bad NAME, ZONE, TARGET or option)";

/// `dispatch schedule …`; [`crate::schedule_cmd::plan`] checks it.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule: run a command on a target at the times a cron expression names.
    #[command(
        override_usage = "dispatch schedule add NAME --cron EXPR [OPTIONS] TARGET CMD [ARGS]...\n       \
                          dispatch schedule add NAME --cron EXPR [OPTIONS] -G GROUP CMD [ARGS]...\n       \
                          dispatch schedule add NAME --cron EXPR [OPTIONS] -L ID,ID,... CMD [ARGS]...",
        after_long_help = SCHEDULE_ADD_AFTER_HELP
    )]
    Add(Box<ScheduleAddArgs>),
    /// List the schedules: next and last run, last job and its outcome.
    List {
        #[arg(long, value_enum, default_value_t = ViewOutput::Text)]
        out: ViewOutput,
    },
    /// Show one schedule: its next fire times, last run and run options.
    Show {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, value_enum, default_value_t = ViewOutput::Text)]
        out: ViewOutput,
    },
    /// Remove a schedule (the jobs it fired stay in the job store).
    Remove {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Pause a schedule: it does not fire until it is resumed.
    Pause {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Resume a paused schedule; fire times that passed while it was paused are not run.
    Resume {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Fire a schedule once now, outside its times, and print the job id.
    RunNow {
        #[arg(value_name = "NAME")]
        name: String,
        /// The job id alone, or a JSON object with the expected and offline minions.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        out: Output,
    },
}

/// `dispatch schedule add NAME --cron EXPR [OPTIONS] TARGET CMD [ARGS]…` as typed.
#[derive(Debug, Args)]
pub struct ScheduleAddArgs {
    /// The schedule's name: dot-separated segments of a-z, 0-9, '-' and '_'.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// When to fire: 5 cron fields, 6 with seconds first, or an alias such as @daily.
    #[arg(long, value_name = "EXPR")]
    pub cron: String,
    /// The IANA time zone EXPR is read in (e.g. Europe/Berlin, America/New_York).
    #[arg(long, value_name = "ZONE", default_value = crate::schedule::DEFAULT_TZ)]
    pub tz: String,
    /// What a firing does while online minions still run the previous one.
    #[arg(long, value_enum, default_value_t = OverlapArg::Skip)]
    pub overlap: OverlapArg,
    /// What happens to fire times that passed while the master was down.
    #[arg(long, value_enum, default_value_t = MissedArg::Skip)]
    pub missed: MissedArg,
    /// Start each firing after a random delay below DUR (e.g. 30s).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub splay: Option<Duration>,
    /// How the added schedule is printed.
    #[arg(long, value_enum, default_value_t = ViewOutput::Text)]
    pub out: ViewOutput,
    #[command(flatten)]
    pub options: RunOptions,
}

/// `--overlap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OverlapArg {
    /// Record the firing as skipped.
    Skip,
    /// Fire anyway.
    Allow,
}

/// `--missed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MissedArg {
    /// Record them as skipped and wait for the next fire time.
    Skip,
    /// Fire once on start-up, however many passed.
    RunOnce,
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
    /// A PLAIN/AMQPLAIN user of the embedded broker with minion ID's rights only, as
    /// ID:PASSWORD (repeatable).
    #[arg(long = "plain-minion-user", value_name = "ID:PASSWORD", value_parser = dispatch_broker::cli::parse_minion_user)]
    pub plain_minion_users: Vec<User>,
    /// How long jobs and their returns are kept in the job store.
    #[arg(long, default_value = DEFAULT_KEEP_JOBS, value_parser = humantime::parse_duration)]
    pub keep_jobs: Duration,
    /// Free disk space under the data dir below which the embedded broker blocks
    /// publishers until space is freed, e.g. 50MB or 2GiB (0 turns the check off).
    #[arg(long, default_value = "50MB", value_parser = dispatch_broker::config::parse_size)]
    pub disk_free_limit: u64,
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

/// How `dispatch job`, `dispatch jobs` and `dispatch schedule` print what they found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ViewOutput {
    /// For people: a report or a table.
    Text,
    /// One JSON document.
    Json,
    /// One YAML document with the same fields as JSON.
    Yaml,
}

/// How `dispatch run` prints returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunOutput {
    /// Each minion's output under its id as it arrives, then a summary.
    Text,
    /// One JSON object per minion and line, as they arrive.
    Json,
    /// One YAML list of the same objects, at the end.
    Yaml,
}

/// `KEY=VALUE` (the value may hold '=' and be empty).
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !text.contains('\0') => {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "--env takes KEY=VALUE with a non-empty KEY (e.g. LANG=C), not '{text}'"
        )),
    }
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
            return ExitCode::from(exit::USAGE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dispatch: {e:#}");
            ExitCode::from(exit::USAGE)
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
                plain_users: args
                    .plain_users
                    .into_iter()
                    .chain(args.plain_minion_users)
                    .collect(),
                keep_jobs: args.keep_jobs,
                disk_free_limit: args.disk_free_limit,
            };
            let announce = |ready: &crate::daemon::Ready| {
                println!("master fingerprint {}", ready.fingerprint);
                match &ready.listening {
                    Some(addr) => println!("{}{addr}", dispatch_common::READY_LINE_PREFIX),
                    None => println!("using broker {}", ready.broker),
                }
            };
            crate::daemon::run(config, dispatch_broker::cli::shutdown_signal(), announce).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Key(KeyCommand::Fingerprint) => {
            let operator = operator(&data_dir, cli.master_fingerprint)?;
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
            let operator = operator(&data_dir, cli.master_fingerprint)?;
            crate::key_cmd::run(&cli.master, operator, verb).await
        }
        Command::Run(args) => {
            // Checked before any I/O: a bad target costs no connection.
            let plan = crate::run_cmd::plan(args)?;
            let operator = operator(&data_dir, cli.master_fingerprint)?;
            crate::run_cmd::run(&cli.master, operator, plan).await
        }
        Command::Minions { out } => {
            let operator = operator(&data_dir, cli.master_fingerprint)?;
            crate::minions_cmd::run(&cli.master, operator, out).await
        }
        Command::Job(args) => {
            let plan = crate::job_cmd::plan(args)?;
            let operator = operator(&data_dir, cli.master_fingerprint)?;
            crate::job_cmd::run(&cli.master, operator, plan).await
        }
        Command::Jobs(args) => {
            let plan = crate::jobs_cmd::plan(args, dispatch_common::message::now_ms())?;
            let operator = operator(&data_dir, cli.master_fingerprint)?;
            crate::jobs_cmd::run(&cli.master, operator, plan).await
        }
        Command::Events(args) => {
            let plan = crate::events_cmd::plan(args)?;
            let operator = operator(&data_dir, cli.master_fingerprint)?;
            crate::events_cmd::run(&cli.master, operator, plan).await
        }
        Command::Schedule(verb) => {
            let plan = crate::schedule_cmd::plan(verb)?;
            let operator = operator(&data_dir, cli.master_fingerprint)?;
            crate::schedule_cmd::run(&cli.master, operator, plan).await
        }
    }
}

/// The operator key the CLI signs with: the local operator key when the master's data
/// dir is readable (on the master host), else the personal key (created on first use).
///
/// The master's key is trusted from, in order: the master's data dir (on the master host;
/// `--master-fingerprint` must then agree with it), `--master-fingerprint`, the personal
/// pin file (written on first use with the embedded broker).
fn operator(data_dir: &DataDir, fingerprint: Option<Fingerprint>) -> anyhow::Result<Operator> {
    let local = data_dir.operator_key();
    let master_on_host = KeyPair::load(&data_dir.master_key())
        .ok()
        .map(|k| k.public());
    let pin = personal_master_pin()
        .context("cannot find a home for the operator key: set HOME or XDG_CONFIG_HOME")?;
    let master = match (master_on_host, fingerprint) {
        (Some(key), Some(fp)) if key.fingerprint() != fp => anyhow::bail!(
            "--master-fingerprint {fp} is not the fingerprint of the master key in {} ({})",
            data_dir.root().display(),
            key.fingerprint()
        ),
        (Some(key), _) => MasterTrust::Key(key),
        (None, Some(fp)) => MasterTrust::Fingerprint(fp),
        (None, None) => MasterTrust::Pinned(pin),
    };
    if std::fs::File::open(&local).is_ok() {
        return Ok(Operator {
            id: LOCAL_OPERATOR_ID.to_owned(),
            key: KeyPair::load_or_create(&local)?,
            master,
        });
    }
    let path = personal_operator_key()
        .context("cannot find a home for the operator key: set HOME or XDG_CONFIG_HOME")?;
    let id = personal_operator_id();
    check_name("operator id", &id)?;
    Ok(Operator {
        id,
        key: KeyPair::load_or_create(&path)?,
        master,
    })
}
