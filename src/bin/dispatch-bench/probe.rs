//! Broker CPU time and resident memory, read from `/proc/PID/stat` and `/proc/PID/status`,
//! and the disk space a broker's data directory takes ([`disk_usage`]).
//!
//! CPU is `utime + stime` of the whole process (every thread, so every Erlang scheduler
//! of a RabbitMQ node) in clock ticks. The tick rate is taken as 100 per second: Linux
//! exports `USER_HZ = 100` to user space on every mainstream architecture
//! (`getconf CLK_TCK`), and reading it for certain would need libc.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Clock ticks per second in `/proc/PID/stat` (Linux `USER_HZ`).
pub const TICKS_PER_SECOND: u64 = 100;

/// One broker process, observed from outside.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pid: u32,
}

impl Probe {
    /// Checks that the process can be read now.
    pub fn new(pid: u32) -> Result<Self> {
        let probe = Probe { pid };
        probe
            .cpu_ticks()
            .with_context(|| format!("cannot observe broker pid {pid}"))?;
        Ok(probe)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// User plus system CPU time consumed so far, in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64> {
        let path = format!("/proc/{}/stat", self.pid);
        let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_cpu_ticks(&stat).with_context(|| format!("parsing {path}"))
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
    }
}

/// Bytes allocated on disk to the files under `dir`, as `du -s --block-size=1` counts
/// them (512-byte blocks, each hard-linked file once per visit, symlinks not followed).
/// Files that vanish during the walk (a broker compacting its store) are skipped.
pub fn disk_usage(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = match fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            Err(err) if err.kind() == ErrorKind::NotFound && path != dir => continue,
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        total += metadata.blocks() * 512;
        if metadata.is_dir() {
            let entries = match fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(err) if err.kind() == ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(err).with_context(|| format!("listing {}", path.display()));
                }
            };
            for entry in entries {
                match entry {
                    Ok(entry) => pending.push(entry.path()),
                    Err(err) if err.kind() == ErrorKind::NotFound => {}
                    Err(err) => {
                        return Err(err).with_context(|| format!("listing {}", path.display()));
                    }
                }
            }
        }
    }
    Ok(total)
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. The command name in
/// field 2 may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Result<u64> {
    let Some(end_of_comm) = stat.rfind(')') else {
        bail!("no command name");
    };
    // After ")" come field 3 (state), 4, ...; utime is field 14, i.e. the 12th from here.
    let mut fields = stat[end_of_comm + 1..].split_whitespace().skip(11);
    let mut next = |name: &str| -> Result<u64> {
        let field = fields.next().with_context(|| format!("missing {name}"))?;
        field
            .parse()
            .with_context(|| format!("bad {name} {field:?}"))
    };
    Ok(next("utime")? + next("stime")?)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_a_command_name_with_spaces() {
        let stat = "42 (beam (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 30 0 1";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 300);
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t  123456 kB\n"),
            Some(123_456)
        );
    }

    #[test]
    fn disk_usage_counts_allocated_blocks_below_a_directory() {
        let dir = std::env::temp_dir().join(format!("dispatch-bench-du-{}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/file"), vec![1u8; 64 * 1024]).unwrap();
        let used = disk_usage(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert!(used.unwrap() >= 64 * 1024);
    }

    #[test]
    fn this_process_can_be_observed() {
        let probe = Probe::new(std::process::id()).unwrap();
        assert!(probe.rss_kib().unwrap() > 0);
    }
}
