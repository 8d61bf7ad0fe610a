use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Closed: calls go through and consecutive failures are counted. After `threshold` of them it
/// opens: calls fail at once for `open_for`. Then one trial call is let through (half-open):
/// its success closes the breaker, its failure opens it again.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        CircuitBreaker {
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a call may go out now.
    pub fn allow(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match *s {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *s = State::HalfOpen;
                true
            }
            // One trial at a time.
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    pub fn success(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State::Closed { failures: 0 };
    }

    pub fn failure(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *s = match *s {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: Instant::now() + self.open_for,
            },
        };
    }

    pub fn is_open(&self) -> bool {
        !matches!(
            *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            State::Closed { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_one_trial() {
        let b = CircuitBreaker::new(3, Duration::from_millis(50));
        b.failure();
        b.failure();
        b.success(); // a success resets the count
        b.failure();
        b.failure();
        assert!(b.allow());
        b.failure();
        assert!(b.is_open());
        assert!(!b.allow(), "open: calls fail fast");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow(), "half-open: one trial");
        assert!(!b.allow(), "only one");
        b.failure();
        assert!(!b.allow(), "the trial failed: open again");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow());
        b.success();
        assert!(!b.is_open());
        assert!(b.allow() && b.allow());
    }
}
