//! Harness for the end-to-end tests of the daemons: real `dispatch master` and
//! `dispatch-minion` processes on `127.0.0.1:0` in temporary dirs, the real `dispatch`
//! CLI, and lapin connections that act as the master or an operator would.
//!
//! Every process's stdout and stderr are collected line by line; [`Daemon::wait_for`]
//! waits (bounded) until a line containing some text appears, which is how tests learn
//! that a minion connected, was refused, or pinned a key. Nothing sleeps to synchronise.

#![allow(dead_code)]

use dispatch_common::envelope::{Envelope, domain};
use dispatch_common::keys::KeyPair;
use dispatch_common::message::{Command as JobCommand, Exec, Reply, now_ms};
use dispatch_common::names::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE, minion_binding};
use dispatch_common::rpc::Role;
use dispatch_common::sasl::SaslClient;
use dispatch_common::target::Target;
use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// How long any single step may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The master's data dir in its temporary home.
const MASTER_DIR: &str = "master";

/// The reconnect cap given to test minions, so a refused minion retries quickly.
pub const TEST_RECONNECT_MAX: &str = "300ms";

/// Awaits `fut`, failing the test after [`STEP_TIMEOUT`] with `what`.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: not done within {STEP_TIMEOUT:?}"),
    }
}

/// Waits until `check` holds, looking again every few milliseconds: for outcomes with
/// no event to wait on (a file appears). Bounded by [`STEP_TIMEOUT`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// [`eventually`] for checks that talk to the daemons (run the CLI, read a file).
pub async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// Lines a process printed so far, and a wake-up for each new one.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    notify: Notify,
}

impl Lines {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.notify.notify_waiters();
    }

    /// The `n`th line (from 1) containing `needle`.
    fn find(&self, needle: &str, n: usize) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .nth(n - 1)
            .cloned()
    }
}

/// A daemon process with its collected output.
pub struct Daemon {
    name: String,
    child: Child,
    lines: Arc<Lines>,
    /// The tasks reading stdout and stderr; they end when the pipes close.
    collectors: Vec<tokio::task::JoinHandle<()>>,
}

/// How long the output of an exited process may take to be read to its end (a
/// grandchild could hold a pipe open; its lines are then simply not waited for).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    lines: Arc<Lines>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.push(line);
        }
    })
}

impl Daemon {
    pub fn spawn(name: &str, mut command: Command) -> Daemon {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info")
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let lines = Arc::new(Lines::default());
        let collectors = vec![
            collect(child.stdout.take().expect("piped stdout"), lines.clone()),
            collect(child.stderr.take().expect("piped stderr"), lines.clone()),
        ];
        Daemon {
            name: name.to_owned(),
            child,
            lines,
            collectors,
        }
    }

    /// Waits until the process printed a line containing `needle`, and returns it.
    pub async fn wait_for(&self, needle: &str) -> String {
        self.wait_for_nth(needle, 1).await
    }

    /// Waits until the process printed `n` lines containing `needle`; returns the last.
    pub async fn wait_for_nth(&self, needle: &str, n: usize) -> String {
        let found = tokio::time::timeout(STEP_TIMEOUT, async {
            loop {
                let notified = self.lines.notify.notified();
                if let Some(line) = self.lines.find(needle, n) {
                    return line;
                }
                notified.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "{} did not print {needle:?} ({n} times) within {STEP_TIMEOUT:?}; its output:\n{}",
                self.name,
                self.output()
            )
        })
    }

    /// Whether a line containing `needle` was printed so far.
    pub fn printed(&self, needle: &str) -> bool {
        self.lines.find(needle, 1).is_some()
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.lines.lock_text()
    }

    /// Waits for the process to exit by itself.
    /// Its last lines are read before this returns, so [`printed`](Self::printed) sees
    /// everything the process wrote.
    pub async fn exit_status(&mut self) -> ExitStatus {
        let status = tokio::time::timeout(STEP_TIMEOUT, self.child.wait()).await;
        let status = match status {
            Ok(status) => status.expect("wait for the process"),
            Err(_) => panic!(
                "{} did not exit within {STEP_TIMEOUT:?}; its output:\n{}",
                self.name,
                self.output()
            ),
        };
        for collector in self.collectors.drain(..) {
            let _ = tokio::time::timeout(OUTPUT_DRAIN, collector).await;
        }
        status
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        self.exit_status().await
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(STEP_TIMEOUT, self.child.wait()).await;
    }
}

impl Lines {
    fn lock_text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// What a CLI run printed, and its exit code.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A `dispatch master` process with its own data dir.
pub struct Master {
    pub daemon: Daemon,
    home: tempfile::TempDir,
    /// Where the embedded broker listens; `None` with an external broker.
    addr: Option<SocketAddr>,
    /// The external broker's URL, when the master uses one.
    external: Option<String>,
    args: Vec<String>,
}

impl Master {
    /// Starts a master on `127.0.0.1:0` with `args` after `master`.
    pub async fn start(args: &[&str]) -> Master {
        Self::start_prepared(args, |_| ()).await.0
    }

    /// Starts a master as [`start`](Self::start) does, once `prepare` has run on the path
    /// of its data dir (e.g. to mount a small file system there); returns what `prepare`
    /// returned beside it.
    pub async fn start_prepared<T>(args: &[&str], prepare: impl FnOnce(&Path) -> T) -> (Master, T) {
        let home = tempfile::tempdir().expect("temp dir");
        let prepared = prepare(&home.path().join(MASTER_DIR));
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (daemon, addr) = Self::launch(home.path(), "127.0.0.1:0", &args).await;
        let master = Master {
            daemon,
            home,
            addr: Some(addr),
            external: None,
            args,
        };
        (master, prepared)
    }

    /// Starts a master that uses the external broker at `url` (e.g. RabbitMQ).
    pub async fn start_external(url: &str) -> Master {
        let home = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(env!("CARGO_BIN_EXE_dispatch"));
        command
            .arg("--data-dir")
            .arg(home.path().join(MASTER_DIR))
            .args(["master", "--broker", url]);
        let daemon = Daemon::spawn("dispatch master", command);
        daemon.wait_for("using broker").await;
        Master {
            daemon,
            home,
            addr: None,
            external: Some(url.to_owned()),
            args: Vec::new(),
        }
    }

    async fn launch(home: &Path, listen: &str, args: &[String]) -> (Daemon, SocketAddr) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dispatch"));
        command
            .arg("--data-dir")
            .arg(home.join(MASTER_DIR))
            .args(["master", "--listen", listen])
            .args(args);
        let daemon = Daemon::spawn("dispatch master", command);
        let line = daemon.wait_for(dispatch_common::READY_LINE_PREFIX).await;
        let addr = line
            .trim()
            .strip_prefix(dispatch_common::READY_LINE_PREFIX)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bad ready line {line:?}"));
        (daemon, addr)
    }

    /// Stops the master (SIGTERM) and starts it again on the same port and data dir.
    pub async fn restart(&mut self) {
        self.restart_after(Duration::ZERO).await;
    }

    /// Stops the master, stays down for `down` (a deadline, e.g. for missed schedule
    /// times), then starts it again on the same port and data dir.
    pub async fn restart_after(&mut self, down: Duration) {
        let status = self.daemon.terminate().await;
        assert!(
            status.success(),
            "master exit: {status}\n{}",
            self.daemon.output()
        );
        tokio::time::sleep(down).await;
        let listen = self
            .addr
            .expect("restart() needs the embedded broker")
            .to_string();
        let (daemon, addr) = Self::launch(self.home.path(), &listen, &self.args).await;
        self.daemon = daemon;
        self.addr = Some(addr);
    }

    /// The URL minions and the CLI are given.
    pub fn url(&self) -> String {
        match (&self.external, self.addr) {
            (Some(url), _) => url.clone(),
            (None, Some(addr)) => format!("amqp://{addr}"),
            (None, None) => unreachable!("a master has a broker"),
        }
    }

    /// The master key's fingerprint, as minions on an external broker are given it.
    pub fn fingerprint(&self) -> String {
        self.master_key().public().fingerprint().to_string()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.home.path().join(MASTER_DIR)
    }

    /// A fresh temporary directory beside the master's (for minions).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.home.path().join(name);
        std::fs::create_dir_all(&dir).expect("create a scratch dir");
        dir
    }

    /// The master's signing key, for tests that act as the master.
    pub fn master_key(&self) -> KeyPair {
        KeyPair::load(&self.data_dir().join("master.key")).expect("read the master key")
    }

    /// Runs `dispatch --data-dir DIR --master URL ARGS…` (the local operator).
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        let output = Command::new(env!("CARGO_BIN_EXE_dispatch"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--master", &self.url()])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = within(&format!("dispatch {args:?}"), output)
            .await
            .expect("run dispatch");
        CliOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs the CLI and insists it succeeds.
    pub async fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args).await;
        assert_eq!(out.code, 0, "dispatch {args:?} failed: {out:?}");
        out.stdout
    }

    /// `dispatch key list --out json`, parsed.
    pub async fn keys(&self) -> Vec<serde_json::Value> {
        let out = self.cli_ok(&["key", "list", "--out", "json"]).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("key list json: {e}\n{out}"))
    }

    /// The state of `id`'s key(s) as `dispatch key list` shows them.
    pub async fn key_states(&self, id: &str) -> Vec<String> {
        self.keys()
            .await
            .iter()
            .filter(|k| k["id"] == id)
            .map(|k| k["state"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Connects with `pair` as `id` (its key must be accepted to get in).
    pub async fn connect_as(
        &self,
        pair: &KeyPair,
        id: &str,
        role: Role,
    ) -> lapin::Result<Connection> {
        let sasl = SaslClient::new(pair.clone(), id, role, &[]);
        within(
            "connect",
            dispatch_common::client::connect(&self.url(), sasl, id),
        )
        .await
    }

    /// A connection with full rights: the local operator's key.
    pub async fn operator(&self) -> Operator {
        let key = KeyPair::load(&self.data_dir().join("operator.key")).expect("operator key");
        let connection = self
            .connect_as(&key, "operator.local", Role::Operator)
            .await
            .expect("the local operator connects");
        let channel = connection.create_channel().await.expect("channel");
        Operator {
            connection,
            channel,
            master: self.master_key(),
        }
    }
}

/// A minion process with its own data dir.
pub struct Minion {
    pub daemon: Daemon,
    pub id: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
}

impl Minion {
    /// Starts `dispatch-minion --id ID` against `master`, with `args` added.
    pub async fn start(master: &Master, id: &str, args: &[&str]) -> Minion {
        let data_dir = master.scratch(&format!("minion-{id}-{}", rand_suffix()));
        Self::start_in(master, id, &data_dir, args).await
    }

    /// Starts a minion on an existing data dir.
    pub async fn start_in(master: &Master, id: &str, data_dir: &Path, args: &[&str]) -> Minion {
        let mut all = vec![
            "--master".to_owned(),
            master.url(),
            "--id".to_owned(),
            id.to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--reconnect-max".to_owned(),
            TEST_RECONNECT_MAX.to_owned(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let mut command = Command::new(env!("CARGO_BIN_EXE_dispatch-minion"));
        command.args(&all);
        Minion {
            daemon: Daemon::spawn(&format!("dispatch-minion {id}"), command),
            id: id.to_owned(),
            data_dir: data_dir.to_owned(),
            args: all,
        }
    }

    /// The fingerprint the minion printed at start-up.
    pub async fn fingerprint(&self) -> String {
        let line = self.daemon.wait_for("fingerprint ").await;
        line.rsplit(' ').next().unwrap_or_default().to_owned()
    }

    /// Stops the minion (SIGTERM) and starts it again with the same flags.
    pub async fn restart(&mut self) {
        self.daemon.terminate().await;
        let mut command = Command::new(env!("CARGO_BIN_EXE_dispatch-minion"));
        command.args(&self.args);
        self.daemon = Daemon::spawn(&format!("dispatch-minion {}", self.id), command);
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Starts a minion, accepts its key and waits until it is connected.
pub async fn accepted_minion(master: &Master, id: &str, args: &[&str]) -> Minion {
    let minion = Minion::start(master, id, args).await;
    minion.daemon.wait_for("pending").await;
    master.cli_ok(&["key", "accept", id]).await;
    minion.daemon.wait_for("connected").await;
    minion
}

/// A connection with full rights that can act as the master: publish signed commands
/// and watch the events the master raises.
pub struct Operator {
    pub connection: Connection,
    pub channel: Channel,
    pub master: KeyPair,
}

/// A command for `target` running `argv`, valid for a minute.
pub fn command(target: Target, argv: &[&str]) -> JobCommand {
    let now = now_ms();
    JobCommand {
        job_id: uuid::Uuid::now_v7(),
        target,
        issued_at_ms: now,
        expires_at_ms: now + 60_000,
        exec: Exec {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            shell: false,
            env: Vec::new(),
            cwd: None,
            timeout_ms: Some(10_000),
        },
        recipients: Vec::new(),
    }
}

impl Operator {
    /// Signs `command` with `key` (the master's, or another to forge).
    pub fn seal(key: &KeyPair, command: &JobCommand) -> Vec<u8> {
        Envelope::seal(domain::COMMAND, key, "master", command)
    }

    /// Publishes command bytes to minion `id` as the master would.
    pub async fn send(&self, id: &str, bytes: &[u8]) {
        within(
            "publish a command",
            self.channel.basic_publish(
                COMMANDS_EXCHANGE.into(),
                minion_binding(id).into(),
                BasicPublishOptions::default(),
                bytes,
                BasicProperties::default().with_delivery_mode(2),
            ),
        )
        .await
        .expect("publish a command");
    }

    /// A consumer of every return the master verified and raised as an event.
    pub async fn returns(&self) -> Consumer {
        let queue = dispatch_common::client::private_queue(&self.channel, FieldTable::default())
            .await
            .expect("declare an event queue");
        self.channel
            .queue_bind(
                queue.clone(),
                EVENTS_EXCHANGE.into(),
                "job.*.*.#".into(), // returns only: `job.<jid>` alone is a new job
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind to job events");
        self.channel
            .basic_consume(
                queue.clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume job events")
    }
}

/// The next return on `events`, as the minion signed it (the master checked it).
pub async fn next_return(events: &mut Consumer) -> Reply {
    let delivery = within("the next return", events.next())
        .await
        .expect("event stream open")
        .expect("event delivery");
    let envelope = Envelope::decode(&delivery.data).expect("an envelope");
    let key = envelope.claimed_key().expect("a key");
    envelope.open(domain::REPLY, &key).expect("a reply")
}
