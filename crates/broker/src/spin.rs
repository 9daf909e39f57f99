//! Spinning before a park, for conversations.
//!
//! On a machine whose idle CPUs sleep deeply (a VM: waking a thread on an idle vCPU took
//! about 26 µs on the one `docs/BENCHMARKS.md` was measured on), a request/reply exchange
//! pays that wake-up at every hop through the broker. So after a conversation's wake-up
//! of `dispatch-broker`'s runtime thread, the thread does not park at once: it polls, for
//! up to [`SPIN_LIMIT`], whether any client socket has new input, and parks as soon as
//! one does (the runtime then finds it ready without sleeping) or when the time is up.
//!
//! [`SpinPolicy`] decides which wake-ups are a conversation's: a few frames (a request, a
//! reply, an ack), after a wait of at least [`SPIN_MIN_WAIT`] (the other side took its
//! time, so a sleep was coming). A stream of messages (many frames, or short waits), a
//! wake-up without frames (a timer, the store) and an idle broker never spin. Neither
//! does the thread while the store works ([`store_worked`] within [`SPIN_STORE_QUIET`]):
//! its answers then wait on the disk and the store's own thread, which a spin would only
//! take CPU from. A spin that found no input makes the next conversations skip spinning,
//! twice as many after each such spin up to [`SPIN_MAX_BACKOFF`], so traffic that pauses
//! longer than the limit does not keep a core busy.
//!
//! The poll is a second epoll set ([`Readiness`]) holding every client socket,
//! edge-triggered: it reports input that arrived since it was last asked, whatever the
//! runtime's own epoll has seen. Input from before the wake-up is forgotten when the
//! thread wakes ([`forget_input`]), so a spin stops only for input that is new.
//!
//! Only `dispatch-broker`'s own runtime spins ([`crate::cli`] calls [`enable`]); a broker
//! embedded in another runtime (the master's) never does.
//!
//! [`SPIN_LIMIT`]: crate::config::SPIN_LIMIT
//! [`SPIN_MIN_WAIT`]: crate::config::SPIN_MIN_WAIT
//! [`SPIN_MAX_BACKOFF`]: crate::config::SPIN_MAX_BACKOFF
//! [`SPIN_STORE_QUIET`]: crate::config::SPIN_STORE_QUIET

use crate::config::{
    SPIN_LIMIT, SPIN_MAX_BACKOFF, SPIN_MAX_FRAMES, SPIN_MIN_WAIT, SPIN_STORE_QUIET,
};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

/// Every client socket, edge-triggered on input.
struct Readiness(Epoll);

static READINESS: OnceLock<Readiness> = OnceLock::new();

/// The clock of [`STORE_WORKED_AT`].
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
/// When the store last wrote or synced something, in µs since [`EPOCH`] (0: never).
static STORE_WORKED_AT: AtomicU64 = AtomicU64::new(0);

/// Called by the store's log thread whenever it commits something.
pub fn store_worked() {
    let now = u64::try_from(EPOCH.elapsed().as_micros()).unwrap_or(u64::MAX);
    STORE_WORKED_AT.store(now.max(1), Ordering::Relaxed);
}

/// Whether the store has worked within [`SPIN_STORE_QUIET`].
pub fn store_busy() -> bool {
    let at = STORE_WORKED_AT.load(Ordering::Relaxed);
    let now = u64::try_from(EPOCH.elapsed().as_micros()).unwrap_or(u64::MAX);
    at != 0 && now.saturating_sub(at) < SPIN_STORE_QUIET.as_micros() as u64
}

/// Turns spinning on for this process (the runtime must call [`crate::coalesce`]'s park
/// hooks). Without it, or if the epoll set cannot be made, nothing spins.
pub fn enable() {
    match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(epoll) => {
            let _ = READINESS.set(Readiness(epoll));
        }
        Err(e) => tracing::warn!("no spinning before parks: {e}"),
    }
}

/// Adds a client socket to the set a spin polls; it leaves the set when it is closed.
pub fn watch(socket: &impl AsFd) {
    if let Some(Readiness(epoll)) = READINESS.get() {
        let interest = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0);
        if let Err(e) = epoll.add(socket.as_fd(), interest) {
            tracing::debug!("a connection is not watched for spinning: {e}");
        }
    }
}

/// Which wake-ups spin before the park; see the module doc.
#[derive(Debug, Clone)]
pub struct SpinPolicy {
    /// Conversation wake-ups still to pass without a spin.
    skip: u32,
    /// What the next spin that finds no input sets `skip` to.
    backoff: u32,
}

impl Default for SpinPolicy {
    fn default() -> Self {
        Self {
            skip: 0,
            backoff: 1,
        }
    }
}

impl SpinPolicy {
    /// Whether to spin after a wake-up that handled `frames` frames after waiting
    /// `waited` for them, `store_busy` saying whether the store works ([`store_busy`]).
    pub fn should_spin(&mut self, frames: u32, waited: Duration, store_busy: bool) -> bool {
        if !(1..=SPIN_MAX_FRAMES).contains(&frames) || waited < SPIN_MIN_WAIT || store_busy {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// Learns from a spin: whether input came within the limit.
    pub fn spun(&mut self, found_input: bool) {
        if found_input {
            self.backoff = 1;
        } else {
            self.skip = self.backoff;
            self.backoff = self.backoff.saturating_mul(2).min(SPIN_MAX_BACKOFF);
        }
    }
}

/// Polls for new client input for at most [`SPIN_LIMIT`]: whether some came, or `None`
/// when spinning is off.
pub fn until_input() -> Option<bool> {
    let Readiness(epoll) = READINESS.get()?;
    let start = Instant::now();
    let mut events = [EpollEvent::empty(); 1];
    while start.elapsed() < SPIN_LIMIT {
        if epoll.wait(&mut events, EpollTimeout::ZERO).unwrap_or(0) > 0 {
            return Some(true);
        }
        std::hint::spin_loop();
    }
    Some(false)
}

/// Forgets the input reported so far: the woken runtime handles it anyway.
pub fn forget_input() {
    if let Some(Readiness(epoll)) = READINESS.get() {
        let mut events = [EpollEvent::empty(); 64];
        while epoll.wait(&mut events, EpollTimeout::ZERO).unwrap_or(0) == events.len() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = SPIN_MIN_WAIT;

    #[test]
    fn only_a_conversation_spins() {
        let mut policy = SpinPolicy::default();
        assert!(!policy.should_spin(0, LONG, false), "a timer or the store");
        assert!(
            !policy.should_spin(SPIN_MAX_FRAMES + 1, LONG, false),
            "a burst"
        );
        let short = SPIN_MIN_WAIT - Duration::from_micros(1);
        assert!(
            !policy.should_spin(3, short, false),
            "a stream: input came at once"
        );
        assert!(
            policy.should_spin(3, LONG, false),
            "one publish after a wait"
        );
        assert!(policy.should_spin(SPIN_MAX_FRAMES, LONG, false));
    }

    #[test]
    fn nothing_spins_while_the_store_works() {
        let mut policy = SpinPolicy::default();
        assert!(!policy.should_spin(3, LONG, true));
        store_worked();
        assert!(store_busy());
    }

    #[test]
    fn spins_that_find_nothing_back_off_and_one_that_finds_input_resets() {
        let mut policy = SpinPolicy::default();
        let skipped = |policy: &mut SpinPolicy| {
            (0..2 * SPIN_MAX_BACKOFF)
                .take_while(|_| !policy.should_spin(3, LONG, false))
                .count()
        };
        policy.spun(false);
        assert_eq!(skipped(&mut policy), 1);
        policy.spun(false);
        assert_eq!(skipped(&mut policy), 2);
        policy.spun(false);
        assert_eq!(skipped(&mut policy), 4);
        for _ in 0..32 {
            policy.spun(false);
        }
        assert_eq!(skipped(&mut policy), SPIN_MAX_BACKOFF as usize, "capped");
        policy.spun(true);
        assert_eq!(skipped(&mut policy), 0);
        policy.spun(false);
        assert_eq!(skipped(&mut policy), 1, "the backoff starts over");
    }
}
