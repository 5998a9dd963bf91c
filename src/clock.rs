//! Time and chance for the shell: the daemon reads the system clock and draws jitter from the OS;
//! the simulated-time tests run the same code on tokio's paused clock with a seeded generator, so
//! a schedule replays from its seed.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use haproxy_acme_state::UnixTime;
use rand::{Rng, SeedableRng};

/// Seconds since the Unix epoch, as the shell sees them.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixTime;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        unix_now()
    }
}

/// The system clock, for code that has no [`Clock`] at hand (CLI commands).
pub fn unix_now() -> UnixTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix time that moves with tokio's clock: `start` at the moment it was made. Under a paused
/// runtime (`tokio::time::pause`) it moves only when the runtime advances time, so every timer
/// and every `now` agree.
pub struct TokioClock {
    start: UnixTime,
    at: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(start: UnixTime) -> TokioClock {
        TokioClock {
            start,
            at: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> UnixTime {
        self.start + self.at.elapsed().as_secs() as i64
    }
}

/// The random draws the core takes as arguments (backoff jitter, the point in a renewal window).
pub struct Dice(Mutex<rand::rngs::StdRng>);

impl Dice {
    /// Seeded from the operating system.
    pub fn from_os() -> Dice {
        Dice(Mutex::new(rand::rngs::StdRng::from_os_rng()))
    }

    /// Seeded: the same seed, the same draws.
    pub fn seeded(seed: u64) -> Dice {
        Dice(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)))
    }

    /// A draw in 0..=1000.
    pub fn permille(&self) -> u16 {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .random_range(0..=1000)
    }
}
