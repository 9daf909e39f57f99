//! The embedded broker as its own process: `dispatch-broker --listen 127.0.0.1:0
//! --data-dir DIR`, found beside this executable (or given by `--broker-bin`), ready once
//! it prints `listening on 127.0.0.1:PORT` on stdout. DIR is a fresh directory under the
//! system temporary directory, so durable queues and persistent messages really go to disk
//! (with an fsync before each publisher confirm); it is removed when the broker stops.
//!
//! Under `cargo run` (the `CARGO` variable is set) the broker binary is built first with
//! the same profile, so `cargo run --release --bin dispatch-bench -- --spawn-embedded`
//! never measures a stale or missing broker.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// Longest wait for the broker's "listening on" line.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

const BINARY: &str = "dispatch-broker";

#[derive(Debug)]
pub struct Embedded {
    child: Child,
    address: String,
    data_dir: PathBuf,
}

impl Embedded {
    /// Starts the broker and waits for its address. Blocking.
    pub fn start(bin: Option<PathBuf>) -> Result<Self> {
        let bin = match bin {
            Some(bin) => bin,
            None => default_binary()?,
        };
        if !bin.is_file() {
            bail!(
                "{} does not exist; build it with `cargo build --release --bin {BINARY}` or pass --broker-bin",
                bin.display()
            );
        }
        let data_dir = std::env::temp_dir().join(format!(
            "dispatch-bench-embedded-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        eprintln!("   embedded broker data dir {}", data_dir.display());
        let spawned = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()));
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&data_dir);
                return Err(err);
            }
        };
        let stdout = child.stdout.take();
        let mut broker = Embedded {
            child,
            address: String::new(),
            data_dir,
        };
        let stdout = stdout.context("broker stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads stdout to its end so the broker never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.trim().strip_prefix("listening on ") {
                    let _ = tx.send(address.to_owned());
                }
            }
        });
        match rx.recv_timeout(LISTEN_TIMEOUT) {
            Ok(address) => broker.address = address,
            Err(_) => {
                let status = broker.child.try_wait().ok().flatten();
                broker.stop();
                match status {
                    Some(status) => bail!(
                        "{} exited ({status}) without printing `listening on ADDR`",
                        bin.display()
                    ),
                    None => bail!(
                        "{} printed no `listening on ADDR` within {LISTEN_TIMEOUT:?}",
                        bin.display()
                    ),
                }
            }
        }
        Ok(broker)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.address)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// SIGTERM (the broker closes its clients with 320 and exits), then SIGKILL, then the
    /// data directory is removed. Blocking.
    pub fn stop(mut self) {
        if let Ok(None) = self.child.try_wait() {
            super::terminate(self.child.id(), Duration::from_secs(10));
        } else {
            report_exit(&mut self.child);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Drop removes the data directory.
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Says so when the broker is already gone before the bench stops it (a crash).
fn report_exit(child: &mut Child) {
    if let Ok(Some(status)) = child.try_wait() {
        eprintln!(
            "   the embedded broker (pid {}) had already exited: {status}",
            child.id()
        );
    }
}

/// `dispatch-broker` beside this executable, built first when running under cargo.
fn default_binary() -> Result<PathBuf> {
    Ok(super::sibling_dir(&[BINARY])?.join(BINARY))
}
