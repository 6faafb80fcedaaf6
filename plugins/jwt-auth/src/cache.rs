//! Tokens that passed verification, so a client presenting the same token again skips the
//! signature check (tens of microseconds for RS256/ES256) — the same trade Envoy's
//! `jwt_cache_config` makes.
//!
//! A hit is only as good as a fresh verification: the key is the whole token (signature
//! included, compared in full), the time window (`exp`, `nbf`, leeway) is checked again on every
//! hit, and an entry remembers the generation of the key set that verified it, so a JWKS refresh
//! that drops or rotates keys retires every entry it verified. Failed tokens are never cached.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use crate::claims::Verified;

/// Independent locks, so threads verifying different tokens rarely wait for each other.
const SHARDS: usize = 16;

/// Keyed by the token's hash, computed once per lookup for the shard and the map alike (a
/// second pass over a ~700-byte token, SipHash in std's map, was most of a hit's cost). The entry
/// keeps the whole token and a hit compares it: two tokens with one hash share a slot (the later
/// replaces the earlier), never each other's claims.
type Shard = Mutex<HashMap<u64, Entry, foldhash::fast::FixedState>>;

#[derive(Debug)]
struct Entry {
    token: Box<str>,
    claims: Arc<Verified>,
    /// Which provider verified it and with which generation of its keys.
    provider: usize,
    generation: u64,
    /// Unix seconds, leeway applied: usable while `not_before <= now <= expires`.
    not_before: u64,
    expires: u64,
}

/// A bounded map from token to verified claims.
#[derive(Debug)]
pub(crate) struct TokenCache {
    shards: Box<[Shard]>,
    per_shard: usize,
    /// Seeded per cache. Not SipHash: only tokens that passed verification are inserted, so
    /// nobody can flood a shard with chosen keys, and SipHash over a ~700-byte token was most of
    /// a cache hit's cost.
    hasher: foldhash::fast::RandomState,
    leeway: u64,
}

/// What a lookup found.
pub(crate) struct Hit {
    pub claims: Arc<Verified>,
    pub provider: usize,
    pub generation: u64,
}

impl TokenCache {
    /// A cache of about `capacity` tokens; `None` when `capacity` is 0 (caching off).
    pub fn new(capacity: usize, leeway_secs: u64) -> Option<Self> {
        if capacity == 0 {
            return None;
        }
        let per_shard = capacity.div_ceil(SHARDS);
        Some(Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(Default::default())))
                .collect(),
            per_shard,
            hasher: foldhash::fast::RandomState::default(),
            leeway: leeway_secs,
        })
    }

    fn shard(&self, token: &str) -> (&Shard, u64) {
        let hash = self.hasher.hash_one(token);
        // SHARDS is a power of two and the hash is uniform: the low bits pick the shard.
        (&self.shards[(hash as usize) % SHARDS], hash)
    }

    /// The claims of `token` if it was verified before and is inside its time window at `now`.
    /// The caller still compares the generation with the provider's current key set.
    pub fn get(&self, token: &str, now: u64) -> Option<Hit> {
        let (shard, hash) = self.shard(token);
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map.get(&hash).filter(|e| &*e.token == token)?;
        if now < entry.not_before || now > entry.expires {
            map.remove(&hash);
            return None;
        }
        Some(Hit {
            claims: entry.claims.clone(),
            provider: entry.provider,
            generation: entry.generation,
        })
    }

    /// Forgets a token whose key set changed since it was cached.
    pub fn remove(&self, token: &str) {
        let (shard, hash) = self.shard(token);
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(&hash).is_some_and(|e| &*e.token == token) {
            map.remove(&hash);
        }
    }

    /// Remembers a token that just passed every check.
    pub fn insert(
        &self,
        token: &str,
        claims: Arc<Verified>,
        provider: usize,
        generation: u64,
        now: u64,
    ) {
        let expires = match claims.get("exp") {
            Some(v) => match seconds(v) {
                Some(exp) => exp.saturating_add(self.leeway),
                // Not a time the validation understood: never trust it from the cache.
                None => return,
            },
            None => u64::MAX,
        };
        let not_before = match claims.get("nbf") {
            Some(v) => match seconds(v) {
                Some(nbf) => nbf.saturating_sub(self.leeway),
                None => return,
            },
            None => 0,
        };
        let (shard, hash) = self.shard(token);
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.per_shard && !map.contains_key(&hash) {
            map.retain(|_, e| now >= e.not_before && now <= e.expires);
            if map.len() >= self.per_shard {
                // Still full of live tokens: drop one. HashMap order is effectively random,
                // which is as good as LRU for a cache this size and costs no bookkeeping.
                if let Some(victim) = map.keys().next().copied() {
                    map.remove(&victim);
                }
            }
        }
        map.insert(
            hash,
            Entry {
                token: token.into(),
                claims,
                provider,
                generation,
                not_before,
                expires,
            },
        );
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// A NumericDate claim as whole seconds, rounded towards the stricter side by the caller's use:
/// fractional seconds are truncated, which only shortens an `exp` window by under a second.
fn seconds(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Arc<Verified> {
        match v {
            Value::Object(m) => Arc::new(Verified::new(m, None)),
            _ => unreachable!(),
        }
    }

    #[test]
    fn zero_capacity_is_off() {
        assert!(TokenCache::new(0, 60).is_none());
    }

    #[test]
    fn hits_inside_the_window_only() {
        let cache = TokenCache::new(100, 10).unwrap();
        cache.insert("t", claims(json!({"exp": 1000, "nbf": 500})), 0, 1, 600);
        assert!(cache.get("t", 600).is_some());
        assert!(cache.get("t", 1010).is_some(), "leeway extends exp");
        assert!(cache.get("t", 490).is_some(), "leeway extends nbf");
        assert!(cache.get("t", 1011).is_none(), "expired");
        assert!(cache.get("t", 600).is_none(), "an expired entry is dropped");
        assert!(cache.get("other", 600).is_none());
    }

    #[test]
    fn remembers_provider_and_generation() {
        let cache = TokenCache::new(100, 0).unwrap();
        cache.insert("t", claims(json!({"sub": "a"})), 2, 7, 0);
        let hit = cache.get("t", u64::MAX - 1).unwrap();
        assert_eq!((hit.provider, hit.generation), (2, 7));
        assert_eq!(hit.claims.get("sub"), Some(&json!("a")));
        cache.remove("t");
        assert!(cache.get("t", 0).is_none());
    }

    #[test]
    fn stays_bounded() {
        let cache = TokenCache::new(64, 0).unwrap();
        for i in 0..10_000 {
            cache.insert(&format!("token-{i}"), claims(json!({"exp": 10})), 0, 1, 0);
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        // Expired entries make room before live ones are evicted.
        for i in 0..10_000 {
            cache.insert(&format!("late-{i}"), claims(json!({"exp": 100})), 0, 1, 50);
        }
        assert!(cache.len() <= 64);
    }

    #[test]
    fn odd_time_claims_are_not_cached() {
        let cache = TokenCache::new(10, 0).unwrap();
        cache.insert("t", claims(json!({"exp": "soon"})), 0, 1, 0);
        assert!(cache.get("t", 0).is_none());
        cache.insert("f", claims(json!({"exp": 100.7})), 0, 1, 0);
        assert!(cache.get("f", 100).is_some());
        assert!(cache.get("f", 101).is_none());
    }
}
