//! The request budget of one provider account: token buckets shared by every worker.
//!
//! Seeded from the catalog's `rate_limit` (per hour and/or per minute, each a bucket that
//! starts full and refills continuously), and corrected by the provider's headers. After a
//! 429 nothing is sent for a while: exactly the provider's `Retry-After` when it gives one;
//! otherwise until the budget holds one request again, doubling (up to a minute) only while
//! 429s keep coming. Mutations wait for a token; background observation only takes one when
//! the bucket is comfortably full, so it never starves mutations.
//!
//! Time here is the process's monotonic clock (tokio's, so tests pause it): budgets are never
//! stored.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::catalog::RateLimit;

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(capacity: u32, period: Duration, now: Instant) -> Bucket {
        let capacity = f64::from(capacity);
        Bucket {
            capacity,
            per_second: capacity / period.as_secs_f64(),
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
    }

    /// Time until one token is available.
    fn wait(&self) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }
}

#[derive(Debug)]
struct State {
    buckets: Vec<Bucket>,
    blocked_until: Option<Instant>,
    /// 429s without `Retry-After` in a row (reset by a success).
    strikes: u32,
}

/// The longest wait after repeated 429s without `Retry-After`.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest `Retry-After` believed (a larger one is a misconfigured proxy, not a budget).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

tokio::task_local! {
    /// Set while a call whose first request was paid for in advance runs.
    static PREPAID: std::cell::Cell<bool>;
}

/// A token taken in advance for a call's first request: a step takes it before it records
/// its intent, so that a step waiting for budget has recorded nothing and an intent is
/// followed by its request at once. Given back when dropped unused (an order found out of
/// stock after all, a call that failed before sending anything).
#[derive(Debug)]
pub struct Reserved {
    limiter: Arc<RateLimiter>,
    used: bool,
}

impl Reserved {
    /// Runs `call` of a module whose HTTP client meters its own requests: its first request
    /// is paid by this token (the client takes none for it).
    pub async fn metered<F: std::future::Future>(mut self, call: F) -> F::Output {
        let (out, used) = PREPAID
            .scope(std::cell::Cell::new(true), async {
                let out = call.await;
                (out, !PREPAID.with(std::cell::Cell::get))
            })
            .await;
        self.used = used;
        out
    }

    /// The token pays for a call the caller makes itself.
    pub fn spend(mut self) {
        self.used = true;
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if !self.used {
            self.limiter.refund();
        }
    }
}

/// Whether the request about to go out was paid for in advance (then it is no longer).
pub fn take_prepaid() -> bool {
    PREPAID.try_with(|p| p.replace(false)).unwrap_or(false)
}

/// What a 429 said about the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TooMany {
    /// `Retry-After`: honoured exactly.
    pub retry_after: Option<Duration>,
    /// When the provider's budget holds one request again, by its rate-limit headers.
    pub refill: Option<Duration>,
    /// The provider said nothing is left (`RateLimit-Remaining: 0`); a 429 with requests
    /// left (a per-endpoint limit, a proxy, a burst) does not empty our budget.
    pub exhausted: bool,
}

/// The shared budget of one account. Unlimited when built from an empty [`RateLimit`].
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<State>,
}

impl RateLimiter {
    /// A limiter for `limit`.
    pub fn new(limit: &RateLimit) -> RateLimiter {
        let now = Instant::now();
        let mut buckets = Vec::new();
        if let Some(h) = limit.requests_per_hour {
            buckets.push(Bucket::new(h, Duration::from_secs(3600), now));
        }
        if let Some(m) = limit.requests_per_minute {
            buckets.push(Bucket::new(m, Duration::from_secs(60), now));
        }
        RateLimiter {
            state: Mutex::new(State {
                buckets,
                blocked_until: None,
                strikes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The share of the budget in use now, 0 to 1: the emptiest bucket's (`None` when the
    /// account has no limit).
    pub fn used(&self) -> Option<f64> {
        let now = Instant::now();
        let mut s = self.lock();
        s.buckets
            .iter_mut()
            .map(|b| {
                b.refill(now);
                (1.0 - b.tokens / b.capacity).clamp(0.0, 1.0)
            })
            .reduce(f64::max)
    }

    /// Takes a token if one is available and at least `reserve` (0 to 1) of every bucket
    /// would remain; otherwise returns how long to wait.
    fn take(&self, reserve: f64) -> Result<(), Duration> {
        let now = Instant::now();
        let mut s = self.lock();
        if let Some(until) = s.blocked_until {
            if until > now {
                return Err(until - now);
            }
            s.blocked_until = None;
        }
        let mut wait = Duration::ZERO;
        for b in &mut s.buckets {
            b.refill(now);
            let floor = 1.0 + reserve * b.capacity;
            if b.tokens < floor {
                let missing = floor - b.tokens;
                wait = wait.max(Duration::from_secs_f64(missing / b.per_second));
            }
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        for b in &mut s.buckets {
            b.tokens -= 1.0;
        }
        Ok(())
    }

    /// Waits for a token. Returns whether it had to wait (counted as a rate-limit wait).
    pub async fn acquire(&self) -> bool {
        let mut waited = false;
        loop {
            match self.take(0.0) {
                Ok(()) => return waited,
                Err(d) => {
                    waited = true;
                    tokio::time::sleep(d.max(Duration::from_millis(1))).await;
                }
            }
        }
    }

    /// Waits for a token and holds it for a call to come (see [`Reserved`]). Returns whether
    /// it had to wait.
    pub async fn reserve(self: &Arc<Self>) -> (Reserved, bool) {
        let waited = self.acquire().await;
        (
            Reserved {
                limiter: self.clone(),
                used: false,
            },
            waited,
        )
    }

    /// Gives back a token that was taken but not used.
    fn refund(&self) {
        let now = Instant::now();
        let mut s = self.lock();
        for b in &mut s.buckets {
            b.refill(now);
            b.tokens = (b.tokens + 1.0).min(b.capacity);
        }
    }

    /// Takes a token if one is available now, without waiting.
    pub fn try_acquire(&self) -> bool {
        self.take(0.0).is_ok()
    }

    /// Takes a token for background work only while a fifth of the budget stays free for
    /// mutations.
    pub fn try_acquire_background(&self) -> bool {
        self.take(0.2).is_ok()
    }

    /// Records a 429 and returns how long nothing goes to the account: `Retry-After`
    /// exactly when given; otherwise until one request is free again (by the provider's
    /// headers, else by our tightest bucket, else a second), doubled for each 429 in a row,
    /// at most a minute.
    pub fn too_many(&self, said: TooMany) -> Duration {
        let now = Instant::now();
        let mut s = self.lock();
        if said.exhausted {
            for b in &mut s.buckets {
                b.refill(now);
                b.tokens = b.tokens.min(0.0);
            }
        }
        let wait = match said.retry_after {
            Some(after) => after.min(MAX_RETRY_AFTER),
            None => {
                let one = s
                    .buckets
                    .iter()
                    .map(|b| Duration::from_secs_f64(1.0 / b.per_second))
                    .max()
                    .unwrap_or(Duration::from_secs(1));
                let base = said
                    .refill
                    .unwrap_or(one)
                    .clamp(Duration::from_millis(100), MAX_BACKOFF);
                let factor = 2u32.saturating_pow(s.strikes.min(16));
                s.strikes = s.strikes.saturating_add(1);
                base.saturating_mul(factor).min(MAX_BACKOFF)
            }
        };
        let until = now + wait;
        s.blocked_until = Some(s.blocked_until.map_or(until, |u| u.max(until)));
        wait
    }

    /// Records an answered request: a streak of 429s is over.
    pub fn answered(&self) {
        self.lock().strikes = 0;
    }

    /// Whether background work could take a token now (a fifth of the budget stays free),
    /// without taking it: a gate for work that then meters each request itself.
    pub fn has_spare(&self) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        if s.blocked_until.is_some_and(|u| u > now) {
            return false;
        }
        s.buckets.iter_mut().all(|b| {
            b.refill(now);
            b.tokens >= 1.0 + 0.2 * b.capacity
        })
    }

    /// Corrects the budget from the provider's rate-limit headers: it has `remaining`
    /// requests left of a window of `limit`, and the next one frees up in `next_in`. The
    /// bucket closest in size to `limit` never believes it has more than the provider says,
    /// and when nothing is left, nothing is sent before `next_in` (several daemons, or other
    /// tools, may share the account).
    pub fn correct(&self, limit: u32, remaining: u32, next_in: Duration) {
        let now = Instant::now();
        let mut s = self.lock();
        let limit = f64::from(limit);
        let closest = s.buckets.iter_mut().min_by(|a, b| {
            (a.capacity - limit)
                .abs()
                .total_cmp(&(b.capacity - limit).abs())
        });
        if let Some(b) = closest {
            b.refill(now);
            b.tokens = b.tokens.min(f64::from(remaining));
        }
        if remaining == 0 {
            let until = now + next_in;
            s.blocked_until = Some(s.blocked_until.map_or(until, |u| u.max(until)));
        }
    }

    /// How long until a request could go out now (for diagnostics).
    pub fn next_slot(&self) -> Duration {
        let now = Instant::now();
        let mut s = self.lock();
        let blocked = s
            .blocked_until
            .map_or(Duration::ZERO, |u| u.saturating_duration_since(now));
        s.buckets.iter_mut().fold(blocked, |acc, b| {
            b.refill(now);
            acc.max(b.wait())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_used_is_the_emptiest_buckets() {
        let unlimited = RateLimiter::new(&RateLimit::default());
        assert_eq!(unlimited.used(), None);
        let l = RateLimiter::new(&RateLimit {
            requests_per_hour: Some(3600),
            requests_per_minute: Some(10),
        });
        assert!(l.used().unwrap() < 0.01);
        for _ in 0..5 {
            assert!(l.try_acquire());
        }
        let used = l.used().unwrap();
        assert!((0.45..=0.5).contains(&used), "{used}");
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_then_refills_at_the_configured_rate() {
        let limiter = RateLimiter::new(&RateLimit {
            requests_per_hour: None,
            requests_per_minute: Some(60),
        });
        for _ in 0..60 {
            assert!(!limiter.acquire().await, "the bucket starts full");
        }
        let start = Instant::now();
        assert!(limiter.acquire().await, "the 61st request waits");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(990) && waited <= Duration::from_millis(1100),
            "one token per second: waited {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_blocks_until_its_reset() {
        let limiter = RateLimiter::new(&RateLimit {
            requests_per_hour: Some(3600),
            requests_per_minute: None,
        });
        limiter.too_many(TooMany {
            retry_after: Some(Duration::from_secs(30)),
            ..TooMany::default()
        });
        assert!(!limiter.try_acquire_background());
        let start = Instant::now();
        limiter.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn background_work_leaves_room_for_mutations() {
        let limiter = RateLimiter::new(&RateLimit {
            requests_per_hour: None,
            requests_per_minute: Some(10),
        });
        let mut background = 0;
        while limiter.try_acquire_background() {
            background += 1;
        }
        assert_eq!(
            background, 8,
            "stops once fewer than a fifth (2) plus one remain"
        );
        assert!(!limiter.acquire().await, "a mutation still goes at once");
    }

    #[tokio::test(start_paused = true)]
    async fn provider_headers_lower_the_budget_and_block_at_zero() {
        let limiter = RateLimiter::new(&RateLimit {
            requests_per_hour: Some(3600),
            requests_per_minute: None,
        });
        limiter.correct(3600, 2, Duration::from_secs(1));
        assert!(limiter.try_acquire());
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire(), "the provider said two were left");
        limiter.correct(3600, 0, Duration::from_secs(20));
        let start = Instant::now();
        limiter.acquire().await;
        assert!(
            start.elapsed() >= Duration::from_secs(20),
            "nothing before the reset"
        );
    }

    fn hetzner() -> RateLimiter {
        RateLimiter::new(&RateLimit {
            requests_per_hour: Some(3600),
            requests_per_minute: None,
        })
    }

    async fn waited(limiter: &RateLimiter) -> Duration {
        let start = Instant::now();
        limiter.acquire().await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_without_retry_after_resumes_when_one_request_is_free_again() {
        let limiter = hetzner();
        // Hetzner's headers on the 429: nothing left, full recovery in an hour, which at
        // 3,600 an hour frees one request a second.
        let wait = limiter.too_many(TooMany {
            retry_after: None,
            refill: Some(Duration::from_secs(1)),
            exhausted: true,
        });
        assert_eq!(wait, Duration::from_secs(1));
        let w = waited(&limiter).await;
        assert!(
            w >= Duration::from_secs(1) && w < Duration::from_millis(1100),
            "resumes after about a second, not a minute: waited {w:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_with_requests_left_does_not_empty_the_budget() {
        let limiter = hetzner();
        let wait = limiter.too_many(TooMany {
            retry_after: None,
            refill: Some(Duration::from_secs(1)),
            exhausted: false,
        });
        tokio::time::sleep(wait).await;
        for _ in 0..100 {
            assert!(
                limiter.try_acquire(),
                "a per-endpoint 429 leaves the account's budget as it was"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_429s_back_off_and_a_success_ends_the_streak() {
        let limiter = hetzner();
        let said = TooMany {
            retry_after: None,
            refill: None,
            exhausted: false,
        };
        let waits: Vec<u64> = (0..8).map(|_| limiter.too_many(said).as_secs()).collect();
        assert_eq!(
            waits,
            vec![1, 2, 4, 8, 16, 32, 60, 60],
            "doubling from one refill interval, at most a minute"
        );
        limiter.answered();
        assert_eq!(limiter.too_many(said), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_exactly() {
        let limiter = hetzner();
        for _ in 0..3 {
            // Repeated Retry-After answers do not back off beyond what the provider says.
            let wait = limiter.too_many(TooMany {
                retry_after: Some(Duration::from_secs(7)),
                refill: Some(Duration::from_secs(1)),
                exhausted: false,
            });
            assert_eq!(wait, Duration::from_secs(7));
        }
        let w = waited(&limiter).await;
        assert!(
            w >= Duration::from_secs(7) && w < Duration::from_millis(7100),
            "waited {w:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reserved_token_pays_one_request_or_is_given_back() {
        let limiter = Arc::new(RateLimiter::new(&RateLimit {
            requests_per_hour: None,
            requests_per_minute: Some(2),
        }));
        let (unused, _) = limiter.reserve().await;
        drop(unused);
        let (reserved, waited) = limiter.reserve().await;
        assert!(!waited, "the unused token was given back");
        let (first, second) = reserved
            .metered(async { (take_prepaid(), take_prepaid()) })
            .await;
        assert!(first, "the call's first request is paid");
        assert!(!second, "its next one takes a token of its own");
        assert!(!take_prepaid(), "outside the call nothing is prepaid");
        assert!(limiter.try_acquire(), "one of the two tokens is left");
        assert!(!limiter.try_acquire());
    }

    #[tokio::test]
    async fn unlimited_accounts_never_wait() {
        let limiter = RateLimiter::new(&RateLimit::default());
        for _ in 0..10_000 {
            assert!(!limiter.acquire().await);
        }
    }
}
