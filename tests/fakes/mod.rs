//! Fake provider APIs on 127.0.0.1, written from the providers' documented APIs (see
//! `../shared/reference/provider-apis.md`): each keeps its servers, advances their status with
//! time, pages its listings, sends the documented error envelopes and rate-limit headers, and
//! injects faults. Each keeps a ledger so tests can count servers per instance and requests.

#![allow(dead_code)]

pub mod cloud;
pub mod ovh;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A provider-side token bucket, as the providers describe theirs.
#[derive(Debug)]
pub struct Bucket {
    pub capacity: f64,
    pub per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(capacity: u32, per_second: f64) -> Bucket {
        Bucket {
            capacity: f64::from(capacity),
            per_second,
            tokens: f64::from(capacity),
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_second)
            .min(self.capacity);
        self.last = now;
    }

    /// Takes a token; false when the request must be answered 429.
    pub fn take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn remaining(&mut self) -> u32 {
        self.refill();
        self.tokens.floor().max(0.0) as u32
    }

    /// Seconds until the bucket is full again.
    pub fn until_full(&mut self) -> f64 {
        self.refill();
        (self.capacity - self.tokens) / self.per_second
    }

    /// Seconds until one token is available.
    pub fn until_one(&mut self) -> f64 {
        self.refill();
        ((1.0 - self.tokens) / self.per_second).max(0.0)
    }
}

/// Faults a fake injects, counted so tests are deterministic.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every n-th mutating request is answered 503 without being applied.
    pub server_error_every: Option<u64>,
    /// Every n-th create is applied, then answered only after this delay (longer than the
    /// client's timeout: the ambiguous create).
    pub slow_create_every: Option<(u64, Duration)>,
    /// Every response is delayed this long.
    pub latency: Duration,
    /// Every n-th request is answered 429 although the account's budget has requests left
    /// (`RateLimit-Remaining` > 0), as a per-endpoint limit, a proxy or a burst limit does;
    /// Hetzner sends no `Retry-After`, DigitalOcean `Retry-After: 1`.
    pub spurious_429_every: Option<u64>,
}

/// What a fake saw.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Requests answered (any status), 429s included.
    pub requests: u64,
    /// Requests answered 429.
    pub throttled: u64,
    /// Requests by "METHOD kind" (kind = the path with ids replaced by `{id}`).
    pub by_kind: HashMap<String, u64>,
    /// Servers ever created, by the instance their label/tag names.
    pub created_for: HashMap<i64, u64>,
    /// Servers deleted.
    pub deleted: u64,
    /// Changes of plan accepted (Hetzner `change_type`, DigitalOcean `resize`).
    pub resizes: u64,
    /// Reinstalls accepted (`rebuild`).
    pub rebuilds: u64,
    /// Requests refused for bad credentials or signatures.
    pub refused: u64,
    /// Time of each request that was not answered 429, since the fake started.
    pub served_at: Vec<Duration>,
    /// Time of each 429.
    pub throttled_at: Vec<Duration>,
}

impl Ledger {
    /// Servers made for one instance.
    pub fn servers_for(&self, instance: i64) -> u64 {
        self.created_for.get(&instance).copied().unwrap_or(0)
    }

    /// Instances with more than one server ever created.
    pub fn duplicates(&self) -> Vec<i64> {
        let mut d: Vec<i64> = self
            .created_for
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(i, _)| *i)
            .collect();
        d.sort_unstable();
        d
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.by_kind.get(kind).copied().unwrap_or(0)
    }
}

/// Replaces numeric path segments (and OVH service names) by `{id}`.
pub fn kind_of(method: &str, path: &str) -> String {
    let parts: Vec<String> = path
        .split('/')
        .map(|p| {
            if !p.is_empty() && (p.chars().all(|c| c.is_ascii_digit()) || p.contains('.')) {
                "{id}".to_owned()
            } else {
                p.to_owned()
            }
        })
        .collect();
    format!("{method} {}", parts.join("/"))
}

/// Serves `router` on 127.0.0.1 and returns its address.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
