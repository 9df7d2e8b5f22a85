//! Token buckets bounding introspection calls for tokens the gateway has not seen before,
//! per client address and in total. Cached tokens never reach them, so a flood of bad tokens
//! cannot slow clients whose tokens are known good, nor turn the gateway into an amplifier
//! against the Keycloak every realm shares.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::config::Bucket;

/// Client addresses tracked at once; beyond that, new addresses share only the total bucket.
const MAX_TRACKED_CLIENTS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn full(shape: Bucket, now: Instant) -> Self {
        Self {
            tokens: f64::from(shape.burst),
            last: now,
        }
    }

    fn refill(&mut self, shape: Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * shape.rate).min(f64::from(shape.burst));
        self.last = now;
    }

    /// `Err(wait)` until one token is available.
    fn check(&self, shape: Bucket) -> Result<(), Duration> {
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / shape.rate))
        }
    }

    fn is_full(&self, shape: Bucket) -> bool {
        self.tokens >= f64::from(shape.burst)
    }
}

/// The key a client is limited under: its IPv4 address, or its IPv6 /64 (one host usually
/// holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
    }
}

struct State {
    total: TokenBucket,
    clients: HashMap<IpAddr, TokenBucket>,
}

pub(crate) struct IntrospectionLimiter {
    total: Bucket,
    per_client: Bucket,
    state: Mutex<State>,
}

impl IntrospectionLimiter {
    pub fn new(total: Bucket, per_client: Bucket) -> Self {
        let now = Instant::now();
        Self {
            total,
            per_client,
            state: Mutex::new(State {
                total: TokenBucket::full(total, now),
                clients: HashMap::new(),
            }),
        }
    }

    /// Takes one introspection from `client`'s bucket and the total one, or says how long to
    /// wait (`Retry-After`). Nothing is taken when either bucket is empty.
    pub fn try_acquire(&self, client: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *state;
        state.total.refill(self.total, now);
        let key = client.map(client_key);
        if let Some(key) = key {
            if !state.clients.contains_key(&key) && state.clients.len() >= MAX_TRACKED_CLIENTS {
                // Idle clients' buckets are full again: forgetting them changes nothing.
                let shape = self.per_client;
                state.clients.retain(|_, b| {
                    b.refill(shape, now);
                    !b.is_full(shape)
                });
            }
        }
        let shape = self.per_client;
        let client_bucket = match key {
            Some(k)
                if state.clients.contains_key(&k) || state.clients.len() < MAX_TRACKED_CLIENTS =>
            {
                let b = state
                    .clients
                    .entry(k)
                    .or_insert_with(|| TokenBucket::full(shape, now));
                b.refill(shape, now);
                b.check(shape)?;
                Some(b)
            }
            _ => None,
        };
        state.total.check(self.total)?;
        state.total.tokens -= 1.0;
        if let Some(b) = client_bucket {
            b.tokens -= 1.0;
        }
        Ok(())
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_millis;

    fn limiter(total: (f64, u32), per_client: (f64, u32)) -> IntrospectionLimiter {
        IntrospectionLimiter::new(
            Bucket {
                rate: total.0,
                burst: total.1,
            },
            Bucket {
                rate: per_client.0,
                burst: per_client.1,
            },
        )
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn per_client_burst_then_refill() {
        let l = limiter((1000.0, 1000), (2.0, 3));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.try_acquire(ip("10.0.0.1"), t0).is_ok());
        }
        let wait = l.try_acquire(ip("10.0.0.1"), t0).unwrap_err();
        assert_eq!(wait, S(500), "one token at 2/s");
        assert_eq!(retry_after_secs(wait), 1);
        // Another client is not affected.
        assert!(l.try_acquire(ip("10.0.0.2"), t0).is_ok());
        assert!(l.try_acquire(ip("10.0.0.1"), t0 + S(500)).is_ok());
        assert!(l.try_acquire(ip("10.0.0.1"), t0 + S(600)).is_err());
    }

    #[test]
    fn total_bucket_bounds_all_clients_and_refusals_cost_nothing() {
        let l = limiter((1.0, 4), (100.0, 100));
        let t0 = Instant::now();
        let mut ok = 0;
        for i in 0..50 {
            if l.try_acquire(ip(&format!("10.0.1.{i}")), t0).is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 4);
        assert_eq!(l.try_acquire(None, t0).unwrap_err(), Duration::from_secs(1));
        // A refused call took nothing from the client's bucket.
        let l = limiter((1.0, 1), (1.0, 1));
        assert!(l.try_acquire(ip("10.0.0.9"), t0).is_ok());
        assert!(l.try_acquire(ip("10.0.0.8"), t0).is_err());
        assert!(
            l.try_acquire(ip("10.0.0.8"), t0 + S(1000)).is_ok(),
            "client bucket untouched by the earlier refusal"
        );
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let l = limiter((1000.0, 1000), (1.0, 1));
        let t0 = Instant::now();
        assert!(l.try_acquire(ip("2001:db8::1"), t0).is_ok());
        assert!(l.try_acquire(ip("2001:db8::ffff:2"), t0).is_err());
        assert!(l.try_acquire(ip("2001:db8:0:1::1"), t0).is_ok());
    }

    #[test]
    fn tracked_clients_are_bounded() {
        let l = limiter((1e9, u32::MAX), (1.0, 1));
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED_CLIENTS as u32 + 10) {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.try_acquire(Some(addr), t0).is_ok());
        }
        assert!(l.state.lock().unwrap().clients.len() <= MAX_TRACKED_CLIENTS);
        // Idle clients are forgotten once their buckets are full again.
        let later = t0 + Duration::from_secs(2);
        assert!(l.try_acquire(ip("192.168.0.1"), later).is_ok());
        assert!(l.state.lock().unwrap().clients.len() <= 2);
    }
}
