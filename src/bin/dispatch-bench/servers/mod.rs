//! The brokers a run measures: one given by URL, or one this process starts and stops.
//!
//! [`Target::start`] turns a [`TargetSpec`] into a reachable URL and, when the process is
//! known, a [`Probe`] on it and the directory it stores messages in. A broker the bench started is stopped by [`Target::stop`], or
//! by `Drop` if the run is abandoned (an error, Ctrl-C).

mod embedded;
mod rabbitmq;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cli::TargetSpec;
use crate::flow;
use crate::probe::Probe;

/// Longest wait for `cargo build` of sibling binaries (it may queue behind other builds).
const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);

/// How long a started broker may take to accept its first AMQP connection.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A broker ready to be measured.
#[derive(Debug)]
pub struct Target {
    pub url: String,
    pub probe: Option<Probe>,
    /// Where the broker keeps durable state, for disk-use figures; `None` for `--url`.
    pub data_dir: Option<PathBuf>,
    owned: Owned,
}

/// The broker process this bench started, if any.
#[derive(Debug)]
enum Owned {
    Nothing,
    Embedded(embedded::Embedded),
    RabbitMq(rabbitmq::RabbitMq),
}

impl Target {
    pub async fn start(spec: &TargetSpec) -> Result<Target> {
        let (url, pid, data_dir, owned) = match spec {
            TargetSpec::Url { url, pid } => (url.clone(), *pid, None, Owned::Nothing),
            TargetSpec::Embedded { bin } => {
                let bin = bin.clone();
                let broker =
                    tokio::task::spawn_blocking(move || embedded::Embedded::start(bin)).await??;
                (
                    broker.url(),
                    Some(broker.pid()),
                    Some(broker.data_dir().to_path_buf()),
                    Owned::Embedded(broker),
                )
            }
            TargetSpec::RabbitMq => {
                let broker = tokio::task::spawn_blocking(rabbitmq::RabbitMq::start).await??;
                (
                    broker.url(),
                    Some(broker.pid()),
                    Some(broker.data_dir()),
                    Owned::RabbitMq(broker),
                )
            }
        };
        let target = Target {
            probe: pid.map(Probe::new).transpose()?,
            url,
            data_dir,
            owned,
        };
        target.wait_until_ready().await?;
        match target.probe {
            Some(probe) => eprintln!("   broker pid {}", probe.pid()),
            None => eprintln!("   no broker pid: rates only, no CPU or memory figures"),
        }
        Ok(target)
    }

    /// Retries an AMQP connection until one succeeds or [`READY_TIMEOUT`] passes.
    async fn wait_until_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match flow::connect(&self.url).await {
                Ok(connection) => {
                    flow::close(&connection).await;
                    return Ok(());
                }
                Err(err) if Instant::now() >= deadline || matches!(self.owned, Owned::Nothing) => {
                    bail!("broker at {} does not take connections: {err:#}", self.url)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Stops the broker if this bench started it.
    pub async fn stop(self) {
        let owned = self.owned;
        let _ = tokio::task::spawn_blocking(move || match owned {
            Owned::Nothing => {}
            Owned::Embedded(broker) => broker.stop(),
            Owned::RabbitMq(broker) => broker.stop(),
        })
        .await;
    }
}

/// Sends `signal` (e.g. "TERM") to `pid` with kill(1); the bench links no libc.
fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Whether `pid` is still running (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            !matches!(stat.rsplit(')').next().map(str::trim_start), Some(rest) if rest.starts_with('Z'))
        }
        Err(_) => false,
    }
}

/// SIGTERM, up to `grace` for the process to go, then SIGKILL.
fn terminate(pid: u32, grace: Duration) {
    signal(pid, "TERM");
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive(pid) {
        eprintln!("   pid {pid} ignored SIGTERM for {grace:?}; killing it");
        signal(pid, "KILL");
    }
}

/// The directory of this executable, where cargo puts the workspace's other binaries;
/// under `cargo run` (the `CARGO` variable is set) `bins` are built there first with the
/// same profile, so a run never measures a stale or missing binary.
pub(crate) fn sibling_dir(bins: &[&str]) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("this executable has no directory")?;
    if let Some(cargo) = std::env::var_os("CARGO") {
        build(Path::new(&cargo), dir, bins)?;
    }
    Ok(dir.to_path_buf())
}

/// `cargo build --bin B…` with the profile of the directory we run from.
fn build(cargo: &Path, dir: &Path, bins: &[&str]) -> Result<()> {
    let mut command = Command::new(cargo);
    command.args(["build", "--quiet"]);
    for bin in bins {
        command.args(["--bin", bin]);
    }
    match dir.file_name().and_then(|name| name.to_str()) {
        Some("release") => {
            command.arg("--release");
        }
        Some("debug") => {}
        Some(profile) => {
            command.args(["--profile", profile]);
        }
        None => {}
    }
    if let Some(manifest_dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        command
            .arg("--manifest-path")
            .arg(Path::new(&manifest_dir).join("Cargo.toml"));
    }
    let names = bins.join(", ");
    eprintln!("   building {names} ...");
    let mut child = command.spawn().context("running cargo build")?;
    let deadline = Instant::now() + BUILD_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("cargo build of {names} failed ({status})");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("cargo build of {names} took longer than {BUILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
