use std::time::Duration;

/// Exponential backoff with full jitter: the n-th retry waits a random time in
/// `[0, min(max_delay, base_delay × 2^(n-1))]`, so clients that failed together do not retry
/// together.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }
    }

    /// The ceiling of the wait before retry `n` (1-based).
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(16);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The wait before retry `n`: uniformly random below [`RetryPolicy::ceiling`].
    pub fn delay(&self, n: u32) -> Duration {
        self.ceiling(n).mul_f64(jitter())
    }
}

/// A number in [0, 1) that differs between calls and processes; statistical quality is not
/// needed, only that clients spread out.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_below_it() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(4), Duration::from_millis(800));
        assert_eq!(p.ceiling(30), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..50).map(|_| p.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= p.ceiling(3)));
        assert!(
            delays.windows(2).any(|w| w[0] != w[1]),
            "delays are jittered"
        );
    }
}
