//! The broker's settings, with their documented defaults. Every bound the broker
//! enforces is here.

use crate::identity::{KeyAuthority, Permissions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `frame_max` proposed in `connection.tune` (RabbitMQ's default).
pub const DEFAULT_FRAME_MAX: u32 = 131_072;
/// The smallest `frame_max` a client may ask for (the 0-9-1 XML spec's `frame-min-size`).
pub const FRAME_MIN_SIZE: u32 = 4096;
/// `channel_max` proposed in `connection.tune` (RabbitMQ's default).
pub const DEFAULT_CHANNEL_MAX: u16 = 2047;
/// Heartbeat proposed in `connection.tune`, in seconds (RabbitMQ's default).
pub const DEFAULT_HEARTBEAT_SECS: u16 = 60;
/// Largest message body accepted.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 16 * 1024 * 1024;
/// Simultaneous client connections; further clients wait to be accepted.
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;
/// Time a client has to complete the handshake (RabbitMQ: 10 s).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a closing peer has to answer `close` with `close-ok`.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes queued for one connection's socket above which deliveries to it pause and its
/// own frames stop being read, until the socket drains.
pub const OUTBOX_HIGH_WATER: usize = 1024 * 1024;
/// Room a connection's reader offers the socket at first, and again once its traffic is
/// light: small, so a thousand idle connections cost little.
pub const READ_SIZE_MIN: usize = 4096;
/// The most room a busy connection's reader offers the socket in one read. Measured with
/// dispatch-bench (transient, 256-byte messages): 16 KiB took 30–40 % less broker CPU per
/// message than 4 KiB; larger sizes brought no more.
pub const READ_SIZE_MAX: usize = 16384;
/// Small reads in a row (under a quarter of the read size) after which a connection's
/// grown read buffer is given back: a few, so traffic that alternates between large and
/// small reads does not reallocate the buffer each time.
pub const READ_SIZE_QUIET_READS: u32 = 8;

/// How long `dispatch-broker`'s runtime thread pauses before parking while wake-ups
/// coalesce (see [`crate::coalesce`]): the most a message waits for company.
pub const COALESCE_PAUSE: Duration = Duration::from_micros(100);
/// A wake-up that found work after parking for less than this counts as busy.
pub const COALESCE_BUSY_WAIT: Duration = Duration::from_micros(500);
/// Frames per wake-up that pausing must add, at least, to the average before it (and at
/// least double it): two more publishes (method, header, body each). A request/reply
/// client whose acks and replies merely merge into one wake-up does not reach it.
pub const COALESCE_MIN_GAIN: u32 = 6;
/// Busy wake-ups in a row before the first pause (a probe).
pub const COALESCE_ENTER_STREAK: u32 = 64;
/// Most busy wake-ups in a row required before another probe, after failed ones.
pub const COALESCE_MAX_BACKOFF: u32 = 8192;
/// No coalescing pause while the store has completed publisher confirms this recently:
/// publishers waiting on the disk are paced by group commits, and pauses cost them more
/// throughput than they save CPU (measured with dispatch-bench persistent-confirms).
pub const COALESCE_DISK_QUIET: Duration = Duration::from_millis(10);

/// `--spin` when not given: the longest `dispatch-broker`'s runtime thread polls for
/// client input before parking after a conversation's wake-up (see [`crate::spin`]),
/// about one client hop of a request/reply exchange on the machine of
/// docs/BENCHMARKS.md.
pub const DEFAULT_SPIN_LIMIT: &str = "100us";
/// Most frames a wake-up may have handled and still be a conversation's: a request or a
/// reply (method, header, body) with an ack or two.
pub const SPIN_MAX_FRAMES: u32 = 8;
/// Shortest wait before a wake-up that makes it a conversation's: input that came
/// sooner is a stream, whose next message comes before a spin would pay.
pub const SPIN_MIN_WAIT: Duration = Duration::from_micros(20);
/// Most conversation wake-ups that skip spinning after spins that found no input.
pub const SPIN_MAX_BACKOFF: u32 = 64;
/// No spinning while the store has committed something this recently: answers then
/// wait on the disk, and a spin takes CPU from the store's thread (measured with
/// dispatch-bench durable-declares).
pub const SPIN_STORE_QUIET: Duration = Duration::from_millis(10);

/// Publisher confirms of one channel remembered as completed ahead of an earlier one
/// still waiting (for the disk); beyond it, that channel's acks are no longer merged
/// into `multiple` acks (see [`crate::confirm`]).
pub const CONFIRM_REORDER_LIMIT: usize = 65_536;

/// Messages a persisted queue keeps in memory at its head; the rest of a backlog is
/// paged out to the message log (see [`crate::queue`]).
pub const QUEUE_MEMORY_HEAD: usize = 2048;

/// Share of physical memory that message bodies may use before publishers are blocked
/// (RabbitMQ's default high watermark).
pub const MEMORY_HIGH_WATERMARK: f64 = 0.4;
/// Used when physical memory cannot be read.
pub const FALLBACK_MEMORY_LIMIT: usize = 1 << 30;
/// How often a blocked publisher checks whether its alarm (memory, disk) has cleared.
pub const ALARM_POLL: Duration = Duration::from_millis(20);
/// Free space under the data directory below which publishers are blocked (RabbitMQ's
/// default `disk_free_limit`).
pub const DEFAULT_DISK_FREE_LIMIT: u64 = 50_000_000;
/// How often free disk space is checked.
pub const DISK_FREE_POLL: Duration = Duration::from_secs(1);

/// The default memory limit: [`MEMORY_HIGH_WATERMARK`] of physical memory.
pub fn default_memory_limit() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        });
    total_kib.map_or(FALLBACK_MEMORY_LIMIT, |kib| {
        (kib as f64 * 1024.0 * MEMORY_HIGH_WATERMARK) as usize
    })
}

/// Parses a size in bytes: a number, optionally followed by kB, MB, GB (powers of 1000)
/// or KiB, MiB, GiB (powers of 1024), as in `50MB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s.trim()[digits.len()..];
    let scale: u64 = match unit {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}; use B, kB, MB, GB, KiB, MiB or GiB"
            ));
        }
    };
    let number: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("expected a size such as 50MB or 1073741824, got {s:?}"))?;
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A user of the PLAIN and AMQPLAIN mechanisms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: String,
    /// Accepted only from loopback addresses, as RabbitMQ treats `guest`.
    pub loopback_only: bool,
    /// What the user may do once logged in.
    pub permissions: Permissions,
}

impl User {
    /// `guest`/`guest`, accepted from loopback only.
    pub fn guest() -> Self {
        Self {
            name: "guest".into(),
            password: "guest".into(),
            loopback_only: true,
            permissions: Permissions::Full,
        }
    }
}

/// Everything the broker can be told.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// PLAIN/AMQPLAIN users; with none, those mechanisms are not offered.
    pub users: Vec<User>,
    /// Decides key logins (`DISPATCH-ED25519`); with none, that mechanism is not offered.
    pub key_authority: Option<Arc<dyn KeyAuthority>>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat_secs: u16,
    pub max_message_size: u64,
    pub max_connections: usize,
    /// Bytes of messages held in memory above which publishing connections are blocked
    /// (`connection.blocked`) until consumers or paging bring it back down.
    pub memory_limit: usize,
    /// Where durable state lives; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// Free bytes under `data_dir` below which publishing connections are blocked until
    /// space is freed; 0 turns the check off.
    pub disk_free_limit: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            users: vec![User::guest()],
            key_authority: None,
            frame_max: DEFAULT_FRAME_MAX,
            channel_max: DEFAULT_CHANNEL_MAX,
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            memory_limit: default_memory_limit(),
            data_dir: None,
            disk_free_limit: DEFAULT_DISK_FREE_LIMIT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_read_with_their_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("50MB"), Ok(50_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512 kB"), Ok(512_000));
        assert!(parse_size("50XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MB").is_err());
        assert!(
            parse_size("99999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }
}
