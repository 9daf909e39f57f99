//! `job-lookup`: a master whose job store already holds `--lookup-jobs` jobs, written
//! before it starts through the master's own library ([`JobStore`]), spread over the last
//! 6 days (inside the default 7-day retention, so the master prunes none), each with 3
//! expected minions and their returns. Then the wall time of the real CLI processes
//! `dispatch job JID` for random stored jobs — by the first 12 hex digits, by the last 12,
//! and by the whole id — and of `dispatch jobs --limit 20`, exit codes checked each time.
//!
//! Of every 20 jobs, 18 succeeded on all three minions (`dispatch job` exits 0), one
//! failed on one minion (exits 1) and one has no return from its third minion (timed
//! out: exits 3); a lookup that finds the wrong job, or none, fails the scenario.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dispatch_common::message::{Exec, ExecResult, Outcome, Reply, now_ms};
use dispatch_common::target::Target;
use dispatch_master::store::{JobRecord, JobStore};

use super::procs::{Binaries, Cluster, TempDir, Walls};
use super::{DispatchCtx, JobLookup, tree_rss_kib};

/// Jobs are spread over this span before now.
const SPAN: Duration = Duration::from_secs(6 * 24 * 3600);

/// The minions jobs are spread over, three per job.
const FLEET: usize = 30;

pub fn run(ctx: &DispatchCtx) -> Result<JobLookup> {
    let bins = Binaries::find(ctx.bin_dir.as_deref())?;
    let dir = TempDir::new("job-lookup")?;
    let data_dir = dir.path().join("master");
    std::fs::create_dir_all(&data_dir)?;
    let store_path = data_dir.join("jobs.sqlite");

    let mut rng = SplitMix(now_ms() ^ u64::from(std::process::id()) << 32);
    let started = Instant::now();
    let ids = fill(&store_path, ctx.lookup_jobs, &mut rng)?;
    let fill_time = started.elapsed();
    eprintln!(
        "     {} jobs stored in {:.1} s ({:.0} jobs/s)",
        ids.len(),
        fill_time.as_secs_f64(),
        ids.len() as f64 / fill_time.as_secs_f64()
    );
    let store_bytes = ["jobs.sqlite", "jobs.sqlite-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(data_dir.join(name)).ok())
        .map(|m| m.len())
        .sum();

    let cluster = Cluster::start_master_in(&bins, dir, data_dir)?;
    eprintln!(
        "     master pid {} on {}",
        cluster.master.pid(),
        cluster.url
    );

    let mut lookups = |digits: fn(&str) -> String| -> Result<Walls> {
        let mut walls = Vec::new();
        for run in 0..ctx.warmup_runs + ctx.runs {
            let index = (rng.next() % ids.len() as u64) as usize;
            let (hex, expected) = (&ids[index], expected_exit(index));
            let jid = digits(hex);
            let wall = cluster
                .timed(&["job", &jid], expected)
                .with_context(|| format!("looking up job {hex} as {jid}"))?;
            if run >= ctx.warmup_runs {
                walls.push(wall);
            }
        }
        Ok(Walls::new(walls))
    };
    let by_prefix = lookups(|hex| hex[..12].to_owned())?;
    let by_suffix = lookups(|hex| hex[20..].to_owned())?;
    let by_id = lookups(|hex| hex.to_owned())?;

    let mut list = Vec::new();
    for run in 0..ctx.warmup_runs + ctx.runs {
        let wall = cluster.timed(&["jobs", "--limit", "20"], 0)?;
        if run >= ctx.warmup_runs {
            list.push(wall);
        }
    }
    let (master_rss_kib, _) = tree_rss_kib(cluster.master.pid())?;
    cluster.stop();
    Ok(JobLookup {
        jobs: ids.len() as u64,
        fill: fill_time,
        by_prefix,
        by_suffix,
        by_id,
        list: Walls::new(list),
        store_bytes,
        master_rss_kib,
    })
}

/// What `dispatch job` exits with for the job stored `index`th.
fn expected_exit(index: usize) -> i32 {
    match index % 20 {
        0 => 1,
        1 => 3,
        _ => 0,
    }
}

/// Writes `count` jobs, oldest first, and returns their ids as 32 hex digits.
fn fill(path: &std::path::Path, count: u64, rng: &mut SplitMix) -> Result<Vec<String>> {
    let store = JobStore::open(path).with_context(|| format!("opening {}", path.display()))?;
    let now = now_ms();
    let span = SPAN.as_millis() as u64;
    let step = (span / count.max(1)).max(1);
    let first = now - span;
    let mut ids = Vec::with_capacity(count as usize);
    for index in 0..count as usize {
        // Evenly spaced, jittered within the step, so every id has its own millisecond.
        let submitted = first + index as u64 * step + rng.next() % step.saturating_sub(1).max(1);
        let hex = uuid_v7_hex(submitted, rng);
        let id = format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
        .parse()
        .context("a generated job id does not parse")?;
        let base = index % FLEET;
        let minions: Vec<String> = (0..3)
            .map(|n| format!("web.{:02}", (base + n) % FLEET + 1))
            .collect();
        let command = ["uptime", "df -h /", "systemctl is-active app"][index % 3];
        let wait_ms = 30_000;
        let ttl_ms = 3_600_000;
        let record = JobRecord {
            id,
            submitted_by: "operator.local".to_owned(),
            submitted_at_ms: submitted,
            origin: if index % 10 == 0 {
                "nightly".to_owned()
            } else {
                "cli".to_owned()
            },
            target: Target::pattern("web.*").context("target")?,
            expected: minions.clone(),
            offline: Vec::new(),
            exec: Exec {
                argv: vec![command.to_owned()],
                shell: true,
                env: Vec::new(),
                cwd: None,
                timeout_ms: Some(3_600_000),
            },
            wait_ms,
            ttl_ms,
            expires_at_ms: submitted + ttl_ms,
            request_nonce: Some(rng.bytes16()),
        };
        store.insert_job(&record)?;
        let returned = if expected_exit(index) == 3 { 2 } else { 3 };
        for (n, minion) in minions.iter().take(returned).enumerate() {
            let failed = expected_exit(index) == 1 && n == 2;
            let duration_ms = 5 + rng.next() % 40;
            let reply = Reply {
                job_id: id,
                minion: minion.clone(),
                outcome: Outcome::Finished(ExecResult {
                    exit_code: Some(if failed { 1 } else { 0 }),
                    stdout: if failed {
                        Vec::new()
                    } else {
                        format!(
                            " {:02}:{:02}:{:02} up 34 days,  2:17,  0 users,  load average: 0.08, 0.03, 0.01\n",
                            (submitted / 3_600_000) % 24,
                            (submitted / 60_000) % 60,
                            (submitted / 1000) % 60
                        )
                        .into_bytes()
                    },
                    stderr: if failed {
                        b"app: inactive\n".to_vec()
                    } else {
                        Vec::new()
                    },
                    duration_ms,
                    ..ExecResult::default()
                }),
            };
            store.insert_return(&reply, submitted + duration_ms + 3 * n as u64)?;
        }
        ids.push(hex);
    }
    Ok(ids)
}

/// A UUIDv7 (RFC 9562) for `unix_ms` with random bits from `rng`, as 32 hex digits.
fn uuid_v7_hex(unix_ms: u64, rng: &mut SplitMix) -> String {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&rng.bytes16()[..10]);
    bytes[6] = 0x70 | (bytes[6] & 0x0f);
    bytes[8] = 0x80 | (bytes[8] & 0x3f);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SplitMix64: enough randomness for ids and picks, without a dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes16(&mut self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.next().to_le_bytes());
        out[8..].copy_from_slice(&self.next().to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v7_ids_carry_the_time_version_and_variant() {
        let mut rng = SplitMix(7);
        let hex = uuid_v7_hex(0x0123_4567_89ab, &mut rng);
        assert_eq!(hex.len(), 32);
        assert_eq!(&hex[..12], "0123456789ab");
        assert_eq!(&hex[12..13], "7");
        assert!(matches!(&hex[16..17], "8" | "9" | "a" | "b"));
    }
}
