//! Spinning before a park, for conversations.
//!
//! On a machine whose idle CPUs sleep deeply (a VM: waking a thread on an idle vCPU took
//! about 26 µs on the one `docs/BENCHMARKS.md` was measured on), a request/reply exchange
//! pays that wake-up at every hop through the broker. So after a conversation's wake-up
//! of `dispatch-broker`'s runtime thread, the thread does not park at once: it polls, for
//! up to `--spin` ([`DEFAULT_SPIN_LIMIT`]), whether any client socket has input, and parks
//! as soon as one does (the runtime then finds it ready without sleeping) or when the
//! time is up. The cost is CPU: about as much per round trip as RabbitMQ's busy-waiting
//! schedulers spend, and a paced stream whose messages come every 20–100 µs keeps the
//! thread spinning between them. `--spin 0` turns it off.
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
//! edge-triggered, beside the runtime's own (each set reports every event, so taking one
//! from this set takes nothing from the runtime). An event may be old, for input the
//! runtime has read already; a spin stops only for a socket that has unread input or was
//! closed by its peer, peeked at with `recv(MSG_PEEK)`.
//!
//! Only `dispatch-broker`'s own runtime spins ([`crate::cli`] calls [`enable`]); a broker
//! embedded in another runtime (the master's) never does.
//!
//! [`DEFAULT_SPIN_LIMIT`]: crate::config::DEFAULT_SPIN_LIMIT
//! [`SPIN_MIN_WAIT`]: crate::config::SPIN_MIN_WAIT
//! [`SPIN_MAX_BACKOFF`]: crate::config::SPIN_MAX_BACKOFF
//! [`SPIN_STORE_QUIET`]: crate::config::SPIN_STORE_QUIET

use crate::coalesce::micros_since_epoch;
use crate::config::{SPIN_MAX_BACKOFF, SPIN_MAX_FRAMES, SPIN_MIN_WAIT, SPIN_STORE_QUIET};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{MsgFlags, recv};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Every client socket, edge-triggered on input; `limit` is the longest spin.
pub struct Readiness {
    epoll: Epoll,
    limit: Duration,
}

static READINESS: OnceLock<Readiness> = OnceLock::new();

/// The events one poll reads at most.
const EVENTS_PER_POLL: usize = 16;

/// When the store last committed something, in µs on [`micros_since_epoch`]'s clock
/// (0: never).
static STORE_WORKED_AT: AtomicU64 = AtomicU64::new(0);

/// Called by the store's log thread whenever it commits something.
pub fn store_worked() {
    STORE_WORKED_AT.store(micros_since_epoch(), Ordering::Relaxed);
}

/// Whether the store has worked within [`SPIN_STORE_QUIET`].
pub fn store_busy() -> bool {
    let at = STORE_WORKED_AT.load(Ordering::Relaxed);
    at != 0 && micros_since_epoch().saturating_sub(at) < SPIN_STORE_QUIET.as_micros() as u64
}

/// Turns spinning of up to `limit` on for this process (the runtime must call
/// [`crate::coalesce`]'s park hooks). Without it, with a zero limit, or if the epoll set
/// cannot be made, nothing spins.
pub fn enable(limit: Duration) {
    if limit.is_zero() {
        return;
    }
    match Readiness::new(limit) {
        Ok(readiness) => {
            let _ = READINESS.set(readiness);
        }
        Err(e) => tracing::warn!("no spinning before parks: {e}"),
    }
}

/// Adds a client socket to the set a spin polls; it leaves the set when it is closed.
pub fn watch(socket: &(impl AsFd + AsRawFd)) {
    if let Some(readiness) = READINESS.get() {
        readiness.watch(socket);
    }
}

impl Readiness {
    pub fn new(limit: Duration) -> nix::Result<Self> {
        Ok(Self {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            limit,
        })
    }

    /// Adds `socket`; the file leaves the set when it is closed.
    pub fn watch(&self, socket: &(impl AsFd + AsRawFd)) {
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
        let data = u64::try_from(socket.as_raw_fd()).unwrap_or(u64::MAX);
        if let Err(e) = self
            .epoll
            .add(socket.as_fd(), EpollEvent::new(interest, data))
        {
            tracing::debug!("a connection is not watched for spinning: {e}");
        }
    }

    /// Polls for unread input for at most the limit; whether some showed.
    pub fn until_input(&self) -> bool {
        let start = Instant::now();
        let mut events = [EpollEvent::empty(); EVENTS_PER_POLL];
        while start.elapsed() < self.limit {
            let ready = self
                .epoll
                .wait(&mut events, EpollTimeout::ZERO)
                .unwrap_or(0);
            if events[..ready].iter().any(has_input) {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }
}

/// Whether the socket of `event` has unread input or was closed by its peer; an event
/// for input the runtime has read already is not.
fn has_input(event: &EpollEvent) -> bool {
    let closed = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
    if event.events().intersects(closed) {
        return true;
    }
    let Ok(fd) = RawFd::try_from(event.data()) else {
        return false;
    };
    let mut byte = [0u8; 1];
    // The socket is open: a closed file leaves the set, and its events with it.
    recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT).is_ok()
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
    /// `waited` for them; `store_busy` says whether the store works ([`store_busy`]), and
    /// is asked only of a conversation's wake-up.
    pub fn should_spin(
        &mut self,
        frames: u32,
        waited: Duration,
        store_busy: impl FnOnce() -> bool,
    ) -> bool {
        if !(1..=SPIN_MAX_FRAMES).contains(&frames) || waited < SPIN_MIN_WAIT || store_busy() {
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

/// Polls for client input (see [`Readiness::until_input`]): whether some showed, or
/// `None` when spinning is off.
pub fn until_input() -> Option<bool> {
    READINESS.get().map(Readiness::until_input)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = SPIN_MIN_WAIT;

    #[test]
    fn only_a_conversation_spins() {
        let mut policy = SpinPolicy::default();
        assert!(
            !policy.should_spin(0, LONG, || false),
            "a timer or the store"
        );
        assert!(
            !policy.should_spin(SPIN_MAX_FRAMES + 1, LONG, || false),
            "a burst"
        );
        let short = SPIN_MIN_WAIT - Duration::from_micros(1);
        assert!(
            !policy.should_spin(3, short, || false),
            "a stream: input came at once"
        );
        assert!(
            policy.should_spin(3, LONG, || false),
            "one publish after a wait"
        );
        assert!(policy.should_spin(SPIN_MAX_FRAMES, LONG, || false));
    }

    #[test]
    fn a_spin_stops_for_unread_input_and_a_closed_peer_but_not_for_input_already_read() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let readiness = Readiness::new(Duration::from_millis(20)).unwrap();
        readiness.watch(&server);
        assert!(!readiness.until_input(), "nothing sent yet");
        client.write_all(b"x").unwrap();
        // Input on its way stops one of the next spins (each bounded by the limit).
        let stops_soon = || (0..100).any(|_| readiness.until_input());
        assert!(stops_soon(), "unread input");
        // The runtime reads it; the event left behind is an old one.
        client.write_all(b"y").unwrap();
        let mut buf = [0u8; 8];
        let mut read = 0;
        while read < 2 {
            match server.read(&mut buf[read..]) {
                Ok(n) => read += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert!(!readiness.until_input(), "input already read");
        drop(client);
        assert!(stops_soon(), "the peer closed");
    }

    #[test]
    fn nothing_spins_while_the_store_works() {
        let mut policy = SpinPolicy::default();
        assert!(!policy.should_spin(3, LONG, || true));
    }

    #[test]
    fn spins_that_find_nothing_back_off_and_one_that_finds_input_resets() {
        let mut policy = SpinPolicy::default();
        let skipped = |policy: &mut SpinPolicy| {
            (0..2 * SPIN_MAX_BACKOFF)
                .take_while(|_| !policy.should_spin(3, LONG, || false))
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
