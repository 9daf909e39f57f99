//! A private RabbitMQ node for `--compare-rabbitmq`: Debian's `rabbitmq-server` run as the
//! current user in a fresh temporary directory (Mnesia, logs, Erlang cookie), with a
//! unique node name, no plugins, and every listener — AMQP, Erlang distribution, and the
//! node's own epmd on a private port — bound to 127.0.0.1 on ports picked free at start.
//!
//! Ready when the node has written its pid file (the pid of `beam.smp`, which is what the
//! probe watches) and its AMQP port accepts TCP; [`super::Target`] then waits for a full
//! AMQP handshake. Stopped with SIGTERM to the node, then `epmd -kill` for the private
//! epmd, then the directory is removed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// Longest wait for the node to boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// Debian's script that runs the node as the calling user (`/usr/sbin/rabbitmq-server`
/// switches to the `rabbitmq` user, who cannot write our temporary directory).
const DEBIAN_SCRIPT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

#[derive(Debug)]
pub struct RabbitMq {
    child: Child,
    beam_pid: u32,
    amqp_port: u16,
    epmd_port: u16,
    dir: PathBuf,
    stopped: bool,
}

impl RabbitMq {
    /// Boots the node. Blocking.
    pub fn start() -> Result<Self> {
        let script = find_script()?;
        let unique = format!(
            "{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let dir = std::env::temp_dir().join(format!("dispatch-bench-rabbitmq-{unique}"));
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        let [amqp_port, dist_port, epmd_port] = free_ports()?;
        let log = std::fs::File::create(dir.join("server.out"))?;
        let child = Command::new(&script)
            .current_dir(&dir)
            .env("HOME", &dir)
            .env(
                "RABBITMQ_NODENAME",
                format!("dispatch-bench-{unique}@localhost"),
            )
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", script.display()))?;
        eprintln!(
            "   RabbitMQ node in {} on 127.0.0.1:{amqp_port}",
            dir.display()
        );
        let mut node = RabbitMq {
            child,
            beam_pid: 0,
            amqp_port,
            epmd_port,
            dir,
            stopped: false,
        };
        match node.wait_for_boot() {
            Ok(pid) => {
                node.beam_pid = pid;
                Ok(node)
            }
            Err(err) => {
                let tail = node.log_tail();
                node.stop();
                Err(err.context(format!(
                    "RabbitMQ did not start; its output ends with:\n{tail}"
                )))
            }
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The node's Mnesia base directory, where its queues and message stores live.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("mnesia")
    }

    /// The pid of `beam.smp`, the node itself.
    pub fn pid(&self) -> u32 {
        self.beam_pid
    }

    fn wait_for_boot(&mut self) -> Result<u32> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let address = SocketAddr::from(([127, 0, 0, 1], self.amqp_port));
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("rabbitmq-server exited ({status})");
            }
            let pid = std::fs::read_to_string(self.dir.join("pid"))
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok());
            if let Some(pid) = pid
                && TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
            {
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                bail!("not listening on {address} after {BOOT_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Stops the node, its private epmd, and removes its directory. Blocking.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if self.beam_pid != 0 {
            super::terminate(self.beam_pid, Duration::from_secs(30));
        }
        // The script (or beam, if it exec'd) goes with the node; reap it either way.
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Only this node ever registered with this epmd, so it is ours to stop.
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn find_script() -> Result<PathBuf> {
    if Path::new(DEBIAN_SCRIPT).is_file() {
        return Ok(PathBuf::from(DEBIAN_SCRIPT));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("rabbitmq-server"))
        .find(|candidate| candidate.is_file())
        .context("rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)")
}

/// Three distinct ports free on 127.0.0.1 right now.
fn free_ports() -> Result<[u16; 3]> {
    let listeners = [0; 3].map(|_| TcpListener::bind("127.0.0.1:0"));
    let mut ports = [0; 3];
    for (port, listener) in ports.iter_mut().zip(listeners) {
        *port = listener
            .context("finding a free port")?
            .local_addr()?
            .port();
    }
    Ok(ports)
}
