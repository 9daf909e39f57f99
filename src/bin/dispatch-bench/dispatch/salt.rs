//! Salt side by side (`--compare-salt`): a private salt-master and `--minions`
//! salt-minions run as the current user in a temporary directory (`root_dir`), every
//! port on 127.0.0.1 picked free at start, keys accepted automatically; then
//! `salt '*' test.ping` is timed exactly as `dispatch run '*' true` is (real CLI process,
//! start to exit, exit code 0 and every minion's `True` checked each time).
//!
//! A salt daemon is a tree of Python processes (a salt-minion is two), so its memory is
//! the VmRSS summed over its process tree; shared pages are counted once per process,
//! as `ps` shows them.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::procs::{Daemon, TempDir, Walls, invoke, spawn_logged};
use super::{DispatchCtx, Fleet, tree_rss_kib};

/// Longest wait for the salt-master's request port, and then for every minion to answer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Longest a single timed `salt` may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts Salt from `bin`, times it, stops it.
pub fn fleet(bin: &Path, ctx: &DispatchCtx) -> Result<Fleet> {
    for name in ["salt", "salt-master", "salt-minion"] {
        if !bin.join(name).is_file() {
            bail!(
                "{} does not exist; install Salt (python3 -m venv /tmp/saltvenv && \
                 /tmp/saltvenv/bin/pip install salt) and pass --salt-bin /tmp/saltvenv/bin",
                bin.join(name).display()
            );
        }
    }
    let version = invoke(
        {
            let mut command = Command::new(bin.join("salt"));
            command.arg("--version");
            command
        },
        CLI_TIMEOUT,
    )
    .ok()
    // `salt 3008.4 (Argon)`
    .and_then(|run| run.stdout.split_whitespace().nth(1).map(str::to_owned));
    let dir = TempDir::new("salt")?;
    let user = current_user()?;
    let [publish_port, ret_port] = free_ports()?;
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf)?;
    std::fs::write(
        conf.join("master"),
        format!(
            "root_dir: {root}\nuser: {user}\ninterface: 127.0.0.1\npublish_port: {publish_port}\n\
             ret_port: {ret_port}\nauto_accept: True\nlog_level: warning\n",
            root = dir.path().join("master-root").display()
        ),
    )?;
    let mut master_command = Command::new(bin.join("salt-master"));
    master_command.arg("-c").arg(&conf);
    let mut master = spawn_logged(
        "salt-master".to_owned(),
        master_command,
        &dir.path().join("master.out"),
    )?;
    eprintln!(
        "     salt-master pid {} (request port {ret_port}), dir {}",
        master.pid(),
        dir.path().display()
    );
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", ret_port)).is_err() {
        master.check_alive()?;
        if Instant::now() >= deadline {
            bail!("salt-master does not listen on 127.0.0.1:{ret_port} after {BOOT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let ids: Vec<String> = (1..=ctx.minions).map(|n| format!("bench.{n:02}")).collect();
    let mut minions: Vec<Daemon> = Vec::new();
    for id in &ids {
        let minion_conf = dir.path().join(id);
        std::fs::create_dir_all(&minion_conf)?;
        std::fs::write(
            minion_conf.join("minion"),
            format!(
                "root_dir: {root}\nuser: {user}\nmaster: 127.0.0.1\nmaster_port: {ret_port}\n\
                 publish_port: {publish_port}\nid: {id}\nlog_level: warning\n",
                root = minion_conf.join("root").display()
            ),
        )?;
        let mut command = Command::new(bin.join("salt-minion"));
        command.arg("-c").arg(&minion_conf);
        minions.push(spawn_logged(
            format!("salt-minion {id}"),
            command,
            &dir.path().join(format!("{id}.out")),
        )?);
    }

    let ping = || -> Result<(Duration, Option<i32>, usize)> {
        let mut command = Command::new(bin.join("salt"));
        command
            .arg("-c")
            .arg(&conf)
            .args(["--out", "txt", "*", "test.ping"]);
        let run = invoke(command, CLI_TIMEOUT).context("salt '*' test.ping")?;
        let answered = ids
            .iter()
            .filter(|id| {
                run.stdout
                    .lines()
                    .any(|line| line.trim() == format!("{id}: True"))
            })
            .count();
        Ok((run.wall, run.code, answered))
    };
    // Up once every minion has authenticated and answers.
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        master.check_alive()?;
        for minion in &mut minions {
            minion.check_alive()?;
        }
        let (_, code, answered) = ping()?;
        if code == Some(0) && answered == ids.len() {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "{answered} of {} salt-minions answer test.ping after {BOOT_TIMEOUT:?}",
                ids.len()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }

    let mut walls = Vec::new();
    for run in 0..ctx.warmup_runs + ctx.runs {
        let (wall, code, answered) = ping()?;
        if code != Some(0) || answered != ids.len() {
            bail!(
                "salt '*' test.ping exited with {code:?} and {answered} of {} minions answering",
                ids.len()
            );
        }
        if run >= ctx.warmup_runs {
            walls.push(wall);
        }
    }
    // Let the processes forked for the last ping exit, as run-wall does for dispatch.
    std::thread::sleep(super::SETTLE);
    let mut minion_rss_kib = Vec::new();
    let mut minion_processes = 0;
    for minion in &minions {
        let (rss, processes) = tree_rss_kib(minion.pid())?;
        minion_rss_kib.push(rss);
        minion_processes = minion_processes.max(processes);
    }
    let (master_rss_kib, master_processes) = tree_rss_kib(master.pid())?;
    for minion in minions {
        minion.stop();
    }
    master.stop();
    Ok(Fleet {
        walls: Walls::new(walls),
        minion_rss_kib,
        master_rss_kib,
        master_processes,
        minion_processes,
        version,
        failed: Vec::new(),
    })
}

/// The name of the user this bench runs as (Salt's `user` setting).
fn current_user() -> Result<String> {
    let output = Command::new("id")
        .arg("-un")
        .output()
        .context("running id -un")?;
    let user = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if user.is_empty() {
        bail!("id -un printed no user name");
    }
    Ok(user)
}

/// Two distinct free TCP ports on 127.0.0.1.
fn free_ports() -> Result<[u16; 2]> {
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    Ok([a.local_addr()?.port(), b.local_addr()?.port()])
}
