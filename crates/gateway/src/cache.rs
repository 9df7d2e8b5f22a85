//! Bounded cache of introspection results, keyed by the SHA-256 of the token (the token
//! itself is never stored).
//!
//! Lifetimes:
//! - an active token is reused for `min(ttl, exp - now)`; a token without `exp` for `ttl`;
//!   an already-expired one is not cached;
//! - an inactive token is reused for `negative_ttl` (default 5 s, capped by `ttl`), which
//!   shields Keycloak from a client retrying a dead token in a loop; a token never turns
//!   active again, so this cannot wrongly refuse a good one;
//! - introspection failures are never cached;
//! - `ttl == 0` disables the cache.
//!
//! When full, expired entries are purged; if still full, the tenth of entries closest to
//! expiry is evicted (amortised O(log n) per insert).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::auth::TokenInfo;

pub type TokenKey = [u8; 32];

/// SHA-256 of the token.
pub fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

/// How long an introspection result may be reused; `None` = do not cache.
pub fn entry_lifetime(
    info: &TokenInfo,
    ttl: Duration,
    negative_ttl: Duration,
    now: SystemTime,
) -> Option<Duration> {
    let lifetime = match info {
        TokenInfo::Inactive => negative_ttl.min(ttl),
        TokenInfo::Active(token) => match token.expires_at() {
            Some(exp) => ttl.min(exp.duration_since(now).ok()?),
            None => ttl,
        },
    };
    (!lifetime.is_zero()).then_some(lifetime)
}

struct Entry {
    info: Arc<TokenInfo>,
    expires_at: Instant,
    /// Until when an active token's lapsed entry is kept as "known good" (its `exp`): its
    /// re-introspection is not charged to the rate limits meant for unknown tokens.
    known_good_until: Option<Instant>,
}

pub struct TokenCache {
    ttl: Duration,
    negative_ttl: Duration,
    max_entries: usize,
    map: Mutex<HashMap<TokenKey, Entry>>,
}

impl TokenCache {
    pub fn new(ttl: Duration, negative_ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            negative_ttl,
            max_entries,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, Entry>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A still-valid entry.
    pub fn get(&self, key: &TokenKey, now: Instant) -> Option<Arc<TokenInfo>> {
        let mut map = self.lock();
        match map.get(key) {
            Some(entry) if entry.expires_at > now => Some(entry.info.clone()),
            Some(entry) if entry.known_good_until.is_some_and(|k| k > now) => None,
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Whether `key` was active when last introspected and has not reached its `exp`.
    pub fn known_good(&self, key: &TokenKey, now: Instant) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|e| e.known_good_until.is_some_and(|k| k > now))
    }

    /// How long the entry for `key` stays valid, if there is one.
    pub fn remaining(&self, key: &TokenKey, now: Instant) -> Option<Duration> {
        let map = self.lock();
        let entry = map.get(key)?;
        (entry.expires_at > now).then(|| entry.expires_at - now)
    }

    /// Stores a result for as long as [`entry_lifetime`] allows (maybe not at all).
    pub fn insert(&self, key: TokenKey, info: Arc<TokenInfo>, now: Instant, wall: SystemTime) {
        if self.max_entries == 0 {
            return;
        }
        let Some(lifetime) = entry_lifetime(&info, self.ttl, self.negative_ttl, wall) else {
            return;
        };
        let expires_at = now + lifetime;
        let mut map = self.lock();
        if map.len() >= self.max_entries && !map.contains_key(&key) {
            map.retain(|_, e| e.expires_at > now);
            if map.len() >= self.max_entries {
                let mut by_expiry: Vec<(Instant, TokenKey)> =
                    map.iter().map(|(k, e)| (e.expires_at, *k)).collect();
                let evict = (self.max_entries / 10).max(1).min(by_expiry.len());
                by_expiry.select_nth_unstable(evict - 1);
                for (_, k) in &by_expiry[..evict] {
                    map.remove(k);
                }
            }
        }
        let known_good_until = match &*info {
            TokenInfo::Active(token) => Some(match token.expires_at() {
                Some(exp) => now + exp.duration_since(wall).unwrap_or_default(),
                None => expires_at + self.ttl,
            }),
            TokenInfo::Inactive => None,
        };
        map.insert(
            key,
            Entry {
                info,
                expires_at,
                known_good_until,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ActiveToken, Lifetime};
    use std::time::UNIX_EPOCH;

    fn wall() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn active(exp: Option<u64>) -> TokenInfo {
        TokenInfo::Active(ActiveToken {
            subject: None,
            client_id: None,
            scopes: vec![],
            audience: None,
            lifetime: Lifetime { exp, nbf: None },
            bearer_type: true,
            user_session: true,
        })
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn lifetime_bounded_by_exp_and_ttl() {
        // exp far away: ttl wins.
        assert_eq!(
            entry_lifetime(&active(Some(1_800_000_600)), S(30), S(5), wall()),
            Some(S(30))
        );
        // exp sooner than ttl: exp wins.
        assert_eq!(
            entry_lifetime(&active(Some(1_800_000_007)), S(30), S(5), wall()),
            Some(S(7))
        );
        // expired or expiring now: not cached.
        assert_eq!(
            entry_lifetime(&active(Some(1_800_000_000)), S(30), S(5), wall()),
            None
        );
        assert_eq!(
            entry_lifetime(&active(Some(1_700_000_000)), S(30), S(5), wall()),
            None
        );
        // no exp: ttl.
        assert_eq!(
            entry_lifetime(&active(None), S(30), S(5), wall()),
            Some(S(30))
        );
        // ttl 0 disables caching entirely.
        assert_eq!(entry_lifetime(&active(None), S(0), S(5), wall()), None);
        assert_eq!(
            entry_lifetime(&TokenInfo::Inactive, S(0), S(5), wall()),
            None
        );
        // negative results: short, capped by ttl.
        assert_eq!(
            entry_lifetime(&TokenInfo::Inactive, S(30), S(5), wall()),
            Some(S(5))
        );
        assert_eq!(
            entry_lifetime(&TokenInfo::Inactive, S(2), S(5), wall()),
            Some(S(2))
        );
        assert_eq!(
            entry_lifetime(&TokenInfo::Inactive, S(30), S(0), wall()),
            None
        );
    }

    /// A cache (ttl 30 s, negative ttl 5 s) holding `entries`, all inserted at the instant returned.
    fn filled<const N: usize>(entries: [(&str, TokenInfo); N]) -> (TokenCache, Instant) {
        let cache = TokenCache::new(S(30), S(5), 100);
        let t0 = Instant::now();
        for (token, info) in entries {
            cache.insert(token_key(token), Arc::new(info), t0, wall());
        }
        (cache, t0)
    }

    #[test]
    fn entries_expire_at_their_lifetime() {
        let (cache, t0) = filled([
            ("expiring-soon", active(Some(1_800_000_010))),
            ("long-lived", active(Some(1_800_009_999))),
            ("revoked", TokenInfo::Inactive),
        ]);
        let [k_exp, k_ttl, k_neg] = ["expiring-soon", "long-lived", "revoked"].map(token_key);
        assert!(cache.get(&k_exp, t0 + S(9)).is_some());
        assert!(cache.get(&k_exp, t0 + S(10)).is_none(), "outlived exp");
        assert!(cache.get(&k_neg, t0 + S(4)).is_some());
        assert!(
            cache.get(&k_neg, t0 + S(5)).is_none(),
            "negative entry outlived negative ttl"
        );
        assert!(cache.get(&k_ttl, t0 + S(29)).is_some());
        assert!(cache.get(&k_ttl, t0 + S(30)).is_none(), "outlived ttl");
        // Lapsed entries are removed on lookup, except an active token's before its `exp`
        // (kept as known good, see `known_good`).
        assert_eq!(cache.len(), 1);
        assert!(cache.known_good(&k_ttl, t0 + S(30)));
    }

    #[test]
    fn bounded_size_evicts_soonest_expiring() {
        let cache = TokenCache::new(S(1000), S(5), 10);
        let t0 = Instant::now();
        for i in 0..10u64 {
            let info = Arc::new(active(Some(1_800_000_100 + i)));
            cache.insert(token_key(&format!("t{i}")), info, t0, wall());
        }
        assert_eq!(cache.len(), 10);
        cache.insert(token_key("new"), Arc::new(active(None)), t0, wall());
        assert_eq!(cache.len(), 10);
        assert!(
            cache.get(&token_key("t0"), t0).is_none(),
            "soonest-expiring entry evicted"
        );
        assert!(cache.get(&token_key("t9"), t0).is_some());
        assert!(cache.get(&token_key("new"), t0).is_some());
        // Expired entries go first.
        let later = t0 + S(105);
        cache.insert(
            token_key("newer"),
            Arc::new(active(None)),
            later,
            wall() + S(105),
        );
        assert!(
            cache.len() <= 6,
            "expired entries were purged, len {}",
            cache.len()
        );
    }

    #[test]
    fn lapsed_active_entries_stay_known_good_until_exp() {
        let (cache, t0) = filled([
            ("good", active(Some(1_800_000_100))),
            ("revoked", TokenInfo::Inactive),
        ]);
        let [good, bad] = ["good", "revoked"].map(token_key);
        assert!(
            cache.get(&good, t0 + S(31)).is_none(),
            "lapsed after the ttl"
        );
        assert!(
            cache.known_good(&good, t0 + S(31)),
            "still known good before exp"
        );
        assert!(!cache.known_good(&good, t0 + S(100)), "not past exp");
        assert!(
            !cache.known_good(&bad, t0),
            "an inactive token is never known good"
        );
        assert!(!cache.known_good(&token_key("never-seen"), t0));
    }

    #[test]
    fn key_is_sha256_not_the_token() {
        let k = token_key("abc");
        assert_eq!(
            hex::encode(k),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
