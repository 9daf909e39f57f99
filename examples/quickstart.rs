//! The quickstart: an embedded master and three minions in one process, in a temp dir.
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```
//!
//! What it does, as an operator would with the binaries:
//!
//! 1. starts a master (`dispatch master`) on `127.0.0.1:0` with its embedded broker;
//! 2. starts `web.01` and `web.02` (group `web`) and `db.01` (group `db`)
//!    (`dispatch-minion --master amqp://ADDR --id web.01 --group web`); each asks for its
//!    key to be accepted and pins the master's key;
//! 3. lists the pending keys (`dispatch key list`), compares each fingerprint with the key
//!    the minion holds, and accepts them (`dispatch key accept web.01 web.02 db.01`);
//! 4. waits until the three are connected (`dispatch minions`);
//! 5. runs `uptime` on `web.*` (`dispatch run 'web.*' uptime`) and prints the returns and
//!    the summary as `dispatch run` does;
//! 6. stops the minions, then the master, and removes the temp dir.
//!
//! Every wait is bounded; a failure is one line on stderr and exit code 1. The daemons'
//! logs are off unless `RUST_LOG` is set (`RUST_LOG=info` shows them on stderr).

use anyhow::{Context, bail};
use dispatch_common::keys::{Fingerprint, KeyPair};
use dispatch_common::message::{Exec, Reply};
use dispatch_common::rpc::{KeyState, RequestBody, ResponseBody, RunSpec};
use dispatch_common::target::Target;
use dispatch_master::client::{MasterClient, MasterTrust, Operator};
use dispatch_master::daemon::{MasterConfig, Ready};
use dispatch_master::layout::{DataDir, LOCAL_OPERATOR_ID};
use dispatch_master::registry::AutoAccept;
use dispatch_master::returns::text_block;
use dispatch_master::run_cmd::{Missing, exit_code_for, summary_text};
use dispatch_minion::config::{Config, DEFAULT_CONCURRENCY, DEFAULT_MAX_OUTPUT};
use dispatch_minion::daemon::{Minion, MinionError};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The minions: id and group.
const MINIONS: [(&str, &str); 3] = [("web.01", "web"), ("web.02", "web"), ("db.01", "db")];
/// Bound of each step (start, keys, connections, shutdown); generous for debug builds.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two polls of the master while waiting for keys or connections.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long the master waits for the returns of `uptime` (`dispatch run --timeout`).
const RUN_WAIT: Duration = Duration::from_secs(15);
/// How long the CLI side waits for each answer beyond [`RUN_WAIT`].
const ANSWER_SLACK: Duration = Duration::from_secs(10);
/// Longest pause between a minion's login attempts: its key is pending at first, so it
/// retries until accepted; short here so the quickstart is quick.
const RECONNECT_MAX: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("quickstart: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(quickstart()) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => {
            eprintln!(
                "quickstart: `uptime` did not succeed everywhere (exit code {code}); \
                 on Debian it comes with the procps package"
            );
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("quickstart failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The daemons' logs on stderr, only when `RUST_LOG` asks for them.
fn init_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
}

/// Runs the whole quickstart; returns the exit code of the `dispatch run` step.
async fn quickstart() -> anyhow::Result<u8> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("dispatch-quickstart-")
        .tempdir()
        .context("creating a temp dir")?;
    say("dispatch quickstart: an embedded master and three minions, in this process");
    say(&format!(
        "data in {} (removed at the end)\n",
        dir.path().display()
    ));
    let cluster = Cluster::start(dir.path()).await?;
    let outcome = operate(&cluster).await;
    let stopped = cluster.stop().await;
    let code = outcome?;
    stopped?;
    say(&format!(
        "\nstopped the minions and the master; done in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(code)
}

/// A running master and its minions.
struct Cluster {
    url: String,
    /// The master key's fingerprint, which minions and the operator check.
    master_fingerprint: Fingerprint,
    data_dir: DataDir,
    master_stop: oneshot::Sender<()>,
    master: JoinHandle<anyhow::Result<()>>,
    minions_stop: watch::Sender<bool>,
    minions: Vec<LocalMinion>,
}

/// One started minion.
struct LocalMinion {
    id: &'static str,
    fingerprint: Fingerprint,
    task: JoinHandle<Result<(), MinionError>>,
}

impl Cluster {
    /// Starts the master, waits until it serves, then starts the minions.
    async fn start(root: &Path) -> anyhow::Result<Self> {
        let data_dir = DataDir::new(&root.join("master"));
        let config = MasterConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            data_dir: data_dir.clone(),
            broker_url: None,
            // Every new key waits for an operator, as in production.
            auto_accept: AutoAccept::Off,
            plain_users: Vec::new(),
            // The temp dir goes at the end anyway.
            keep_jobs: Duration::from_secs(3600),
            disk_free_limit: dispatch_broker::config::DEFAULT_DISK_FREE_LIMIT,
        };
        let (master_stop, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel::<Ready>();
        let master = tokio::spawn(dispatch_master::daemon::run(
            config,
            async move {
                let _ = stop_rx.await;
            },
            move |ready| {
                let _ = ready_tx.send(ready.clone());
            },
        ));
        let ready = match tokio::time::timeout(STEP_TIMEOUT, ready_rx).await {
            Ok(Ok(ready)) => ready,
            Ok(Err(_)) => {
                // The master ended before it was ready: its error says why.
                let error = match master.await {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => anyhow::anyhow!("it stopped without an error"),
                    Err(e) => anyhow::anyhow!(e),
                };
                return Err(error.context("the master did not start"));
            }
            Err(_) => bail!("the master was not ready within {STEP_TIMEOUT:?}"),
        };
        say(&format!(
            "master   ready on {}, key fingerprint {}",
            ready.listening.as_deref().unwrap_or(&ready.broker),
            ready.fingerprint
        ));

        let url = format!("amqp://{}", ready.listening.as_deref().unwrap_or_default());
        let (minions_stop, stop_rx) = watch::channel(false);
        let mut minions = Vec::new();
        for (id, group) in MINIONS {
            let config = minion_config(root, &url, id, group, ready.fingerprint);
            let pair = KeyPair::load_or_create(&config.key_path())
                .with_context(|| format!("creating the key of {id}"))?;
            let fingerprint = pair.public().fingerprint();
            let minion =
                Minion::new(config, pair).with_context(|| format!("starting minion {id}"))?;
            say(&format!(
                "minion   {id:<7}(group {group}), key fingerprint {fingerprint}"
            ));
            minions.push(LocalMinion {
                id,
                fingerprint,
                task: tokio::spawn(minion.run(stop_rx.clone())),
            });
        }
        say("         the minions pin the master's key fingerprint above");
        Ok(Self {
            url,
            master_fingerprint: ready.fingerprint,
            data_dir,
            master_stop,
            master,
            minions_stop,
            minions,
        })
    }

    /// Fails if a minion stopped on its own (e.g. the master key did not match).
    fn check_minions(&self) -> anyhow::Result<()> {
        if let Some(minion) = self.minions.iter().find(|m| m.task.is_finished()) {
            bail!(
                "minion {} stopped on its own (RUST_LOG=warn shows why)",
                minion.id
            );
        }
        Ok(())
    }

    /// Stops the minions (they announce they go down), then the master.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.minions_stop.send(true);
        for minion in self.minions {
            match tokio::time::timeout(STEP_TIMEOUT, minion.task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => bail!("minion {} failed: {e}", minion.id),
                Ok(Err(e)) => bail!("minion {} panicked: {e}", minion.id),
                Err(_) => bail!("minion {} did not stop within {STEP_TIMEOUT:?}", minion.id),
            }
        }
        let _ = self.master_stop.send(());
        match tokio::time::timeout(STEP_TIMEOUT, self.master).await {
            Ok(Ok(result)) => result.context("the master failed"),
            Ok(Err(e)) => bail!("the master panicked: {e}"),
            Err(_) => bail!("the master did not stop within {STEP_TIMEOUT:?}"),
        }
    }
}

/// The configuration `dispatch-minion --master URL --id ID --group GROUP
/// --master-fingerprint FP --data-dir ROOT/ID` would build.
fn minion_config(root: &Path, url: &str, id: &str, group: &str, master: Fingerprint) -> Config {
    Config {
        master: url.to_owned(),
        external_broker: false,
        id: id.to_owned(),
        groups: vec![group.to_owned()],
        data_dir: PathBuf::from(root).join(id),
        master_fingerprint: Some(master),
        skew: Duration::from_secs(60),
        concurrency: DEFAULT_CONCURRENCY,
        reconnect_max: RECONNECT_MAX,
        max_output: DEFAULT_MAX_OUTPUT,
    }
}

/// The operator's part: accept the keys, wait for the minions, run `uptime`.
async fn operate(cluster: &Cluster) -> anyhow::Result<u8> {
    let operator = Operator {
        id: LOCAL_OPERATOR_ID.to_owned(),
        key: KeyPair::load(&cluster.data_dir.operator_key())
            .context("loading the local operator key")?,
        // Answers must be signed by the key with this fingerprint.
        master: MasterTrust::Fingerprint(cluster.master_fingerprint),
    };
    let mut client = MasterClient::connect(&cluster.url, operator).await?;
    let outcome = async {
        accept_keys(cluster, &mut client).await?;
        wait_until_up(cluster, &mut client).await?;
        run_uptime(&mut client).await
    }
    .await;
    client.close().await;
    outcome
}

/// Waits for the three key requests, compares their fingerprints with the minions' own
/// keys, and accepts them.
async fn accept_keys(cluster: &Cluster, client: &mut MasterClient) -> anyhow::Result<()> {
    say("\n$ dispatch key list            # the minions asked to be accepted");
    let deadline = Instant::now() + STEP_TIMEOUT;
    let keys = loop {
        cluster.check_minions()?;
        let keys = match client.call(RequestBody::ListKeys).await? {
            ResponseBody::Keys(keys) => keys,
            other => bail!("unexpected answer to ListKeys: {other:?}"),
        };
        let pending = |id: &str| {
            keys.iter()
                .any(|k| k.id == id && k.state == KeyState::Pending)
        };
        if cluster.minions.iter().all(|m| pending(m.id)) {
            break keys;
        }
        if Instant::now() >= deadline {
            bail!("the minions' keys were not all pending within {STEP_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    for minion in &cluster.minions {
        let Some(key) = keys.iter().find(|k| k.id == minion.id) else {
            bail!("no key request from {}", minion.id);
        };
        let own = minion.fingerprint.to_string();
        if key.fingerprint != own {
            bail!(
                "the pending key of {} is {}, but the minion's key is {own}: not accepting it",
                minion.id,
                key.fingerprint
            );
        }
        say(&format!(
            "  {:<7} {:<8} {}  = the minion's own key",
            key.id,
            key.state.as_str(),
            key.fingerprint
        ));
    }
    let ids: Vec<String> = cluster.minions.iter().map(|m| m.id.to_owned()).collect();
    say(&format!("$ dispatch key accept {}", ids.join(" ")));
    match client
        .call(RequestBody::AcceptKeys { ids, all: false })
        .await?
    {
        ResponseBody::Done(lines) => lines.iter().for_each(|line| say(&format!("  {line}"))),
        ResponseBody::Error(reason) => bail!("the master refused to accept the keys: {reason}"),
        other => bail!("unexpected answer to AcceptKeys: {other:?}"),
    }
    Ok(())
}

/// Polls `dispatch minions` until every minion is connected.
async fn wait_until_up(cluster: &Cluster, client: &mut MasterClient) -> anyhow::Result<()> {
    say("$ dispatch minions             # waiting for them to connect");
    let started = Instant::now();
    loop {
        cluster.check_minions()?;
        let minions = match client.call(RequestBody::Minions).await? {
            ResponseBody::Minions(minions) => minions,
            other => bail!("unexpected answer to Minions: {other:?}"),
        };
        let up: Vec<&str> = minions
            .iter()
            .filter(|m| m.up)
            .map(|m| m.id.as_str())
            .collect();
        if cluster.minions.iter().all(|m| up.contains(&m.id)) {
            for minion in &minions {
                say(&format!(
                    "  {:<7} up  groups {}",
                    minion.id,
                    minion.groups.join(",")
                ));
            }
            say(&format!(
                "  all {} connected after {:.1}s",
                up.len(),
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if started.elapsed() >= STEP_TIMEOUT {
            bail!(
                "only {} of {} minions connected within {STEP_TIMEOUT:?} (up: {})",
                up.len(),
                cluster.minions.len(),
                up.join(", ")
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `dispatch run 'web.*' uptime`: prints each return as it arrives, then the summary;
/// returns the exit code `dispatch run` would have.
async fn run_uptime(client: &mut MasterClient) -> anyhow::Result<u8> {
    say("\n$ dispatch run 'web.*' uptime");
    let spec = RunSpec {
        target: Target::pattern("web.*")?,
        exec: Exec {
            argv: vec!["uptime".to_owned()],
            shell: false,
            env: Vec::new(),
            cwd: None,
            timeout_ms: Some(RUN_WAIT.as_millis() as u64),
        },
        wait_ms: RUN_WAIT.as_millis() as u64,
        ttl_ms: 60_000,
        batch: None,
        detach: false,
    };
    let wait = RUN_WAIT + ANSWER_SLACK;
    let call = client.send(RequestBody::Run(spec.clone())).await?;
    let started = match client.answer(&call, wait).await? {
        ResponseBody::Started(started) => started,
        ResponseBody::Error(reason) => bail!("the master refused the run: {reason}"),
        other => bail!("unexpected first answer to Run: {other:?}"),
    };
    let mut replies: Vec<Reply> = Vec::new();
    loop {
        match client.answer(&call, wait).await? {
            ResponseBody::Return(reply) => {
                if !replies.iter().any(|r| r.minion == reply.minion) {
                    say_raw(&text_block(&reply));
                    replies.push(reply);
                }
            }
            ResponseBody::Summary(summary) => {
                let missing = Missing::after(&started, &summary, &replies);
                say_raw(&format!(
                    "\n{}",
                    summary_text(started.job_id, &replies, &missing, &spec)
                ));
                return Ok(exit_code_for(&replies, &missing));
            }
            ResponseBody::Error(reason) => bail!("job {}: {reason}", started.job_id),
            other => bail!("unexpected answer to Run: {other:?}"),
        }
    }
}

/// Prints a line on stdout at once.
fn say(line: &str) {
    say_raw(&format!("{line}\n"));
}

/// Prints text on stdout at once (ignoring a closed stdout, e.g. `| head`).
fn say_raw(text: &str) {
    if cfg!(test) {
        // Through `print!`, which the test harness captures.
        print!("{text}");
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    /// The quickstart itself, so `cargo test` notices when it breaks.
    #[tokio::test(flavor = "multi_thread")]
    async fn quickstart_runs_uptime_on_the_web_minions() {
        let code = tokio::time::timeout(std::time::Duration::from_secs(120), super::quickstart())
            .await
            .expect("the quickstart finished within 2 minutes")
            .expect("the quickstart succeeded");
        assert_eq!(code, 0);
    }
}
