//! Coalescing of wake-ups under sustained load.
//!
//! Clients such as lapin write every publish (and every `basic.ack`) with its own
//! syscall, and the broker handles one faster than the client sends the next: left
//! alone, each runtime wake-up carries a single message and costs an `epoll_wait`, a
//! read and a write — most of the broker's CPU goes to the kernel. Under sustained load
//! the runtime thread of `dispatch-broker` (current-thread) therefore pauses briefly
//! (`std::thread::sleep` of [`COALESCE_PAUSE`]) before it parks: every connection then
//! has several messages waiting, read and answered with one syscall each.
//!
//! A pause must never delay a lone request, so it is adaptive ([`Coalescer`]):
//!
//! - only after [`COALESCE_ENTER_STREAK`] wake-ups in a row that each handled frames
//!   after a wait shorter than [`COALESCE_BUSY_WAIT`] does the thread pause once, as a
//!   probe (a longer wait starts the count over; a wake-up without frames — the store's
//!   log thread completing confirms, a timer — does not count either way);
//! - the wake-up after that probe must carry clearly more frames than wake-ups did
//!   before it: twice as many, and at least [`COALESCE_MIN_GAIN`] more. A request/reply
//!   exchange (one message in flight) gains nothing from waiting and fails the probe at
//!   once. After a successful probe the thread keeps pausing while the frames per
//!   wake-up, averaged (each new wake-up weighs half), stay at that level; it stops as
//!   soon as the average drops below it, or a wake-up came after a wait of
//!   [`COALESCE_BUSY_WAIT`] or more (the load is gone), so the next lone request is not
//!   delayed;
//! - after a failed probe the next one waits for twice as many busy wake-ups, up to
//!   [`COALESCE_MAX_BACKOFF`] of them, so a ping-pong client meets a pause only rarely.
//!
//! No pause is made while the store's log thread is completing publisher confirms
//! ([`confirms_completed`], within [`COALESCE_DISK_QUIET`]): publishers waiting on the
//! disk are paced by group commits, and a pause in that loop costs more throughput than it
//! saves CPU.
//!
//! Connections report the frames they handle with [`note_frames`]; the runtime calls
//! [`before_park`] and [`after_unpark`] (installed by [`crate::cli`] with
//! `on_thread_park` / `on_thread_unpark`). A runtime without the hooks never pauses.
//!
//! [`COALESCE_PAUSE`]: crate::config::COALESCE_PAUSE
//! [`COALESCE_ENTER_STREAK`]: crate::config::COALESCE_ENTER_STREAK
//! [`COALESCE_BUSY_WAIT`]: crate::config::COALESCE_BUSY_WAIT
//! [`COALESCE_MIN_GAIN`]: crate::config::COALESCE_MIN_GAIN
//! [`COALESCE_MAX_BACKOFF`]: crate::config::COALESCE_MAX_BACKOFF
//! [`COALESCE_DISK_QUIET`]: crate::config::COALESCE_DISK_QUIET

use crate::config::{
    COALESCE_BUSY_WAIT, COALESCE_DISK_QUIET, COALESCE_ENTER_STREAK, COALESCE_MAX_BACKOFF,
    COALESCE_MIN_GAIN, COALESCE_PAUSE,
};
use std::cell::{Cell, RefCell};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The clock of [`micros_since_epoch`].
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
/// When the store last completed publisher confirms, in µs since [`EPOCH`] (0: never).
static CONFIRMED_AT: AtomicU64 = AtomicU64::new(0);

/// Microseconds since the first call in this process (at least 1, so 0 can mean never).
pub(crate) fn micros_since_epoch() -> u64 {
    u64::try_from(EPOCH.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Called by the store's log thread when it has completed publisher confirms.
pub fn confirms_completed() {
    CONFIRMED_AT.store(micros_since_epoch(), Ordering::Relaxed);
}

/// Whether publishers are waiting on the disk now (see the module doc).
fn publishers_wait_on_disk() -> bool {
    let at = CONFIRMED_AT.load(Ordering::Relaxed);
    at != 0 && micros_since_epoch().saturating_sub(at) < COALESCE_DISK_QUIET.as_micros() as u64
}

/// What one runtime wake-up (from unpark to the next park) saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeUp {
    /// Time parked before it: how long the thread waited for work to arrive (not
    /// counting a coalescing pause).
    pub waited: Duration,
    /// Frames handled by all connections during it.
    pub frames: u32,
}

/// The pause decision, fed with one [`WakeUp`] per park.
#[derive(Debug, Clone)]
pub struct Coalescer {
    /// Busy wake-ups in a row while not pausing.
    streak: u32,
    /// Frames of that streak, for its average.
    streak_frames: u64,
    /// Busy wake-ups in a row needed before the next probe.
    needed: u32,
    /// Set while pausing.
    pausing: Option<Pausing>,
}

/// What pausing must keep bringing.
#[derive(Debug, Clone, Copy)]
struct Pausing {
    /// Frames per wake-up that pauses must at least bring, on average.
    required: u32,
    /// Frames per wake-up since pausing began, smoothed (halved at each wake-up), or
    /// `None` before the probe's result.
    average: Option<u32>,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self {
            streak: 0,
            streak_frames: 0,
            needed: COALESCE_ENTER_STREAK,
            pausing: None,
        }
    }
}

impl Coalescer {
    /// Whether to pause (and for how long) before parking, after `wake`.
    pub fn on_park(&mut self, wake: WakeUp) -> Option<Duration> {
        if let Some(pausing) = &mut self.pausing {
            // `wake` followed a pause: keep going only while pauses pay off. The probe
            // must pay off by itself; after it one thin wake-up is forgiven, not two.
            let probe = pausing.average.is_none();
            let average = pausing
                .average
                .map_or(wake.frames, |average| (average + wake.frames) / 2);
            pausing.average = Some(average);
            if average >= pausing.required && wake.waited < COALESCE_BUSY_WAIT {
                self.needed = COALESCE_ENTER_STREAK;
                return Some(COALESCE_PAUSE);
            }
            self.pausing = None;
            if probe {
                self.needed = self.needed.saturating_mul(2).min(COALESCE_MAX_BACKOFF);
            }
            self.reset_streak();
            return None;
        }
        if wake.waited >= COALESCE_BUSY_WAIT {
            self.reset_streak();
            return None;
        }
        if wake.frames == 0 {
            // Woken by the store, a timer or a writer: not traffic, either way.
            return None;
        }
        self.streak += 1;
        self.streak_frames += u64::from(wake.frames);
        if self.streak < self.needed {
            return None;
        }
        let average = self.streak_frames.div_ceil(u64::from(self.streak));
        let required = (average * 2).max(average + u64::from(COALESCE_MIN_GAIN));
        self.pausing = Some(Pausing {
            required: u32::try_from(required).unwrap_or(u32::MAX),
            average: None,
        });
        self.reset_streak();
        Some(COALESCE_PAUSE)
    }

    fn reset_streak(&mut self) {
        self.streak = 0;
        self.streak_frames = 0;
    }
}

thread_local! {
    static FRAMES: Cell<u32> = const { Cell::new(0) };
    /// When the thread last started to park (after any pause), if it is parked.
    static PARKED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Time spent parked before the current wake-up.
    static WAITED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    static COALESCER: RefCell<Coalescer> = RefCell::new(Coalescer::default());
    static SPIN: RefCell<crate::spin::SpinPolicy> = RefCell::new(crate::spin::SpinPolicy::default());
}

/// Counts frames handled on this thread (by a connection's read loop).
pub fn note_frames(frames: u32) {
    FRAMES.with(|f| f.set(f.get().saturating_add(frames)));
}

/// The runtime's `on_thread_park` hook: pauses when the load calls for it, and spins
/// after a conversation's wake-up ([`crate::spin`]).
pub fn before_park() {
    let wake = WakeUp {
        waited: WAITED.with(Cell::get),
        frames: FRAMES.with(|f| f.replace(0)),
    };
    // Publishers waiting on the disk get neither a pause nor a lesson for the coalescer.
    let pause = if publishers_wait_on_disk() {
        None
    } else {
        COALESCER.with(|c| c.borrow_mut().on_park(wake))
    };
    if let Some(pause) = pause {
        std::thread::sleep(pause);
    }
    // A spin is part of the wait for work, a pause is not.
    PARKED_AT.with(|p| p.set(Some(Instant::now())));
    let spin = pause.is_none()
        && SPIN.with(|s| {
            s.borrow_mut()
                .should_spin(wake.frames, wake.waited, crate::spin::store_busy)
        });
    if spin && let Some(found) = crate::spin::until_input() {
        SPIN.with(|s| s.borrow_mut().spun(found));
    }
}

/// The runtime's `on_thread_unpark` hook.
pub fn after_unpark() {
    let waited = PARKED_AT
        .with(Cell::take)
        .map_or(Duration::ZERO, |at| at.elapsed());
    WAITED.with(|w| w.set(waited));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wake-up after waiting `waited_us` µs that handled `frames` frames.
    fn wake(waited_us: u64, frames: u32) -> WakeUp {
        WakeUp {
            waited: Duration::from_micros(waited_us),
            frames,
        }
    }

    /// Feeds `wakes` and counts the pauses asked for.
    fn pauses(c: &mut Coalescer, wakes: impl IntoIterator<Item = WakeUp>) -> usize {
        wakes.into_iter().filter_map(|w| c.on_park(w)).count()
    }

    /// A busy wake-up carrying one publish (method, header, body).
    const ONE_PUBLISH: WakeUp = WakeUp {
        waited: Duration::from_micros(30),
        frames: 3,
    };

    #[test]
    fn publishers_waiting_on_the_disk_are_not_paused_for() {
        confirms_completed();
        assert!(publishers_wait_on_disk());
    }

    #[test]
    fn a_request_after_a_quiet_spell_never_pauses() {
        let mut c = Coalescer::default();
        let quiet = wake(COALESCE_BUSY_WAIT.as_micros() as u64, 3);
        for _ in 0..10 * COALESCE_MAX_BACKOFF {
            assert_eq!(c.on_park(quiet), None);
        }
        // Even in the middle of a busy streak: one quiet wait starts it over.
        let mut c = Coalescer::default();
        let busy = COALESCE_ENTER_STREAK as usize - 1;
        assert_eq!(pauses(&mut c, vec![ONE_PUBLISH; busy]), 0);
        assert_eq!(c.on_park(quiet), None);
        assert_eq!(pauses(&mut c, vec![ONE_PUBLISH; busy]), 0);
    }

    #[test]
    fn sustained_load_pauses_while_each_pause_pays_off() {
        let mut c = Coalescer::default();
        let busy = COALESCE_ENTER_STREAK as usize;
        assert_eq!(pauses(&mut c, vec![ONE_PUBLISH; busy - 1]), 0);
        assert_eq!(c.on_park(ONE_PUBLISH), Some(COALESCE_PAUSE), "the probe");
        // Each pause lets ten publishes gather: keep pausing.
        for _ in 0..1000 {
            assert_eq!(c.on_park(wake(0, 30)), Some(COALESCE_PAUSE));
        }
        // One thin wake-up is forgiven; when the load drops to one message per wake-up
        // the pauses stop at the second.
        assert_eq!(c.on_park(wake(0, 3)), Some(COALESCE_PAUSE));
        assert_eq!(c.on_park(wake(0, 30)), Some(COALESCE_PAUSE));
        assert_eq!(c.on_park(wake(0, 3)), Some(COALESCE_PAUSE));
        assert_eq!(c.on_park(wake(0, 3)), None);
        // A fresh streak is needed before the next probe, of the entry length again.
        assert_eq!(pauses(&mut c, vec![ONE_PUBLISH; busy - 1]), 0);
        assert_eq!(c.on_park(ONE_PUBLISH), Some(COALESCE_PAUSE));
    }

    #[test]
    fn the_pause_stops_as_soon_as_the_thread_waits_again() {
        let mut c = Coalescer::default();
        let busy = COALESCE_ENTER_STREAK as usize;
        assert_eq!(pauses(&mut c, vec![ONE_PUBLISH; busy]), 1);
        assert_eq!(c.on_park(wake(0, 30)), Some(COALESCE_PAUSE));
        let idle = wake(COALESCE_BUSY_WAIT.as_micros() as u64 * 100, 30);
        assert_eq!(c.on_park(idle), None);
        assert_eq!(c.on_park(ONE_PUBLISH), None);
    }

    #[test]
    fn request_reply_meets_a_pause_ever_more_rarely() {
        // One message in flight: a pause brings nothing more, so every probe fails (the
        // wake-up after it does not count as busy) and the next one needs twice as many
        // busy wake-ups, up to the bound.
        let mut c = Coalescer::default();
        let mut needed = COALESCE_ENTER_STREAK as usize;
        let mut pauses_seen = 0;
        let mut since_last = 0;
        let wakes = 50 * COALESCE_MAX_BACKOFF as usize;
        for _ in 0..wakes {
            since_last += 1;
            if c.on_park(ONE_PUBLISH).is_some() {
                let expected = if pauses_seen == 0 { needed } else { needed + 1 };
                assert_eq!(
                    since_last, expected,
                    "probe {pauses_seen} came early or late"
                );
                pauses_seen += 1;
                needed = (needed * 2).min(COALESCE_MAX_BACKOFF as usize);
                since_last = 0;
            }
        }
        // Fewer than one wake-up in a thousand paused.
        assert!(pauses_seen * 1000 < wakes, "{pauses_seen} pauses");
    }

    #[test]
    fn a_pause_that_pays_off_resets_the_backoff() {
        let mut c = Coalescer::default();
        let streak = COALESCE_ENTER_STREAK as usize;
        // Two failed probes: the next needs four times the entry streak.
        for n in [1, 2] {
            assert_eq!(pauses(&mut c, vec![ONE_PUBLISH; n * streak - 1]), 0);
            assert_eq!(c.on_park(ONE_PUBLISH), Some(COALESCE_PAUSE));
            assert_eq!(c.on_park(ONE_PUBLISH), None, "probe {n} failed");
        }
        assert_eq!(pauses(&mut c, vec![ONE_PUBLISH; 4 * streak - 1]), 0);
        assert_eq!(c.on_park(ONE_PUBLISH), Some(COALESCE_PAUSE));
        assert_eq!(
            c.on_park(wake(0, 30)),
            Some(COALESCE_PAUSE),
            "this one paid off"
        );
        assert_eq!(c.on_park(wake(10_000, 3)), None, "the load is gone");
        // Back to twice the entry streak, not eight times.
        assert_eq!(pauses(&mut c, vec![ONE_PUBLISH; 2 * streak]), 1);
    }

    #[test]
    fn replies_and_acks_merging_into_one_wake_up_are_no_gain() {
        // A responder that acks each request: its reply (3 frames) and its ack (1) come
        // in separate wake-ups, or together after a pause. That saves a wake-up but is
        // no sustained load: the probe fails.
        let mut c = Coalescer::default();
        let alternating =
            (0..COALESCE_ENTER_STREAK).map(|i| wake(40, if i % 2 == 0 { 3 } else { 1 }));
        assert_eq!(pauses(&mut c, alternating), 1);
        assert_eq!(c.on_park(wake(0, 4)), None);
        assert_eq!(c.on_park(wake(40, 3)), None);
    }

    #[test]
    fn wake_ups_without_frames_neither_count_nor_break_a_streak() {
        // The store thread waking the runtime for confirms, a timer, a writer task.
        let mut c = Coalescer::default();
        let half = COALESCE_ENTER_STREAK as usize / 2;
        assert_eq!(pauses(&mut c, vec![ONE_PUBLISH; half]), 0);
        assert_eq!(pauses(&mut c, vec![wake(10, 0); 1000]), 0);
        assert_eq!(pauses(&mut c, vec![ONE_PUBLISH; half]), 1);
    }
}
