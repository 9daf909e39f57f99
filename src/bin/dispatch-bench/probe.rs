//! Broker CPU time and resident memory, read from `/proc/PID/stat` and `/proc/PID/status`.
//!
//! CPU is `utime + stime` of the whole process (every thread, so every Erlang scheduler
//! of a RabbitMQ node) in clock ticks. The tick rate is taken as 100 per second: Linux
//! exports `USER_HZ = 100` to user space on every mainstream architecture
//! (`getconf CLK_TCK`), and reading it for certain would need libc.

use std::fs;

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
    fn this_process_can_be_observed() {
        let probe = Probe::new(std::process::id()).unwrap();
        assert!(probe.rss_kib().unwrap() > 0);
    }
}
