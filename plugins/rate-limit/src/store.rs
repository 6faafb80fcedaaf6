//! A bounded keyed state store for governor: the GCRA state (theoretical arrival time, TAT) of at
//! most `max_keys` keys.
//!
//! governor's own keyed stores grow with every distinct key until `retain_recent` runs, so a flood
//! of distinct keys (spoofed headers, many addresses) could take any amount of memory between two
//! sweeps. This store has a hard cap: a new key arriving at a full shard evicts the key, among a
//! few sampled ones, whose bucket is nearest to full (the smallest TAT), the one whose loss forgets
//! the least. Sampling instead of an exact LRU keeps insertion O(1) (the approach Redis takes for
//! `maxmemory`); keys whose bucket is already full are the first to go, as the periodic sweep
//! (`retain_recent`) would drop them anyway.
//!
//! Keys are kept as a 128-bit keyed hash (two SipHash-1-3 with per-process random keys), not as
//! their bytes: about 42 bytes per key instead of twice that plus an allocation, and one memory
//! access less per check. Two distinct keys share a bucket only if both 64-bit halves collide,
//! which the random keys put out of reach of clients choosing their values (and of chance:
//! about 10^-27 for a million keys).

use std::cell::Cell;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use indexmap::map::raw_entry_v1::RawEntryMut;
use indexmap::map::RawEntryApiV1;
use indexmap::IndexMap;

/// What the store keeps of a key.
type Fingerprint = [u64; 2];
/// Every access goes through the raw entry API with the fingerprint's first half as the hash;
/// the map's own hasher is never used.
type Shard = IndexMap<Fingerprint, u64, BuildHasherDefault<DefaultHasher>>;

/// How many entries eviction looks at to pick a victim.
const EVICTION_SAMPLES: usize = 5;

/// Shards are locked independently; more of them means less contention and shorter sweeps per
/// lock, but a shard must stay large enough for the per-shard cap to approximate the global one.
const MAX_SHARDS: usize = 64;
const MIN_KEYS_PER_SHARD: usize = 1024;

thread_local! {
    /// The TAT left by the last decision this thread made (see [`BoundedStore::last_tat`]).
    static LAST_TAT: Cell<u64> = const { Cell::new(0) };
}

/// GCRA states of at most `max_keys` keys, sharded by key hash.
#[derive(Debug)]
pub struct BoundedStore {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hashers: [RandomState; 2],
}

impl BoundedStore {
    /// A store that never holds more than `max_keys` keys (`max_keys >= 1`).
    pub fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        let shards = (max_keys / MIN_KEYS_PER_SHARD)
            .next_power_of_two()
            .clamp(1, MAX_SHARDS);
        // Rounded down, so the total never exceeds `max_keys`.
        let per_shard = (max_keys / shards).max(1);
        BoundedStore {
            shards: (0..shards)
                .map(|_| Mutex::new(IndexMap::default()))
                .collect(),
            per_shard,
            hashers: [RandomState::new(), RandomState::new()],
        }
    }

    /// The most keys the store holds.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// The TAT (governor nanoseconds) that the calling thread's last decision left for its key:
    /// the new TAT after an admission, the unchanged one after a refusal.
    ///
    /// governor hands the TAT to the store but gives the caller only a yes/no, and the headers
    /// need it (`t` = time until the next unit). The value is per thread and read right after
    /// `check_key` with no `.await` in between, so it is exactly this decision's.
    pub fn last_tat() -> u64 {
        LAST_TAT.with(Cell::get)
    }

    fn fingerprint(&self, key: &[u8]) -> Fingerprint {
        [self.hashers[0].hash_one(key), self.hashers[1].hash_one(key)]
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // hashbrown places entries by the low bits and tags them with the top 7; picking the
        // shard from the middle keeps both fully random within a shard.
        let i = (hash >> 32) as usize & (self.shards.len() - 1);
        // A panic while holding the lock cannot leave a map of integers inconsistent.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn evict_one(shard: &mut Shard) {
        let len = shard.len();
        if len == 0 {
            return;
        }
        let mut victim = fastrand::usize(..len);
        for _ in 1..EVICTION_SAMPLES.min(len) {
            let i = fastrand::usize(..len);
            if shard.get_index(i).map(|(_, t)| *t) < shard.get_index(victim).map(|(_, t)| *t) {
                victim = i;
            }
        }
        shard.swap_remove_index(victim);
    }
}

impl StateStore for BoundedStore {
    type Key = Vec<u8>;

    fn measure_and_replace<T, F, E>(&self, key: &Self::Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let fp = self.fingerprint(key);
        let hash = fp[0];
        let mut shard = self.shard(hash);
        let existing = shard.raw_entry_v1().index_from_hash(hash, |k| *k == fp);
        if let Some(i) = existing {
            let Some((_, tat)) = shard.get_index_mut(i) else {
                // Unreachable: the index was just found under the same lock.
                return f(None).map(|(t, _)| t);
            };
            return match f(Some(Nanos::from(*tat))) {
                Ok((t, new)) => {
                    *tat = new.as_u64();
                    LAST_TAT.with(|c| c.set(*tat));
                    Ok(t)
                }
                Err(e) => {
                    LAST_TAT.with(|c| c.set(*tat));
                    Err(e)
                }
            };
        }
        // A fresh key always conforms (burst >= 1); only an admitted one is stored.
        let (t, new) = f(None)?;
        if shard.len() >= self.per_shard {
            Self::evict_one(&mut shard);
        }
        // Still vacant: the lock has been held since the lookup.
        if let RawEntryMut::Vacant(e) = shard.raw_entry_mut_v1().from_hash(hash, |k| *k == fp) {
            e.insert_hashed_nocheck(hash, fp, new.as_u64());
        }
        LAST_TAT.with(|c| c.set(new.as_u64()));
        Ok(t)
    }
}

impl ShrinkableKeyedStateStore<Vec<u8>> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        for shard in self.shards.iter() {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|_, tat| *tat > drop_below);
        }
    }

    fn shrink_to_fit(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            // Only worth a reallocation when most of the table is empty.
            if shard.capacity() > 4 * shard.len().max(64) {
                shard.shrink_to_fit();
            }
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(store: &BoundedStore, key: &str) -> bool {
        let fp = store.fingerprint(key.as_bytes());
        store
            .shard(fp[0])
            .raw_entry_v1()
            .index_from_hash(fp[0], |k| *k == fp)
            .is_some()
    }

    /// A GCRA-like update: admit and set TAT to `value`, or refuse when the old TAT is `u64::MAX`.
    fn put(store: &BoundedStore, key: &str, value: u64) -> Result<(), ()> {
        store.measure_and_replace(&key.as_bytes().to_vec(), |old| {
            if old.map(|o| o.as_u64()) == Some(u64::MAX) {
                Err(())
            } else {
                Ok(((), Nanos::from(value)))
            }
        })
    }

    #[test]
    fn shard_count_and_capacity_follow_max_keys() {
        assert_eq!(BoundedStore::new(10).capacity(), 10);
        assert_eq!(BoundedStore::new(10).shards.len(), 1);
        let big = BoundedStore::new(1_000_000);
        assert_eq!(big.shards.len(), MAX_SHARDS);
        assert!(big.capacity() <= 1_000_000 && big.capacity() > 999_900);
        assert_eq!(BoundedStore::new(0).capacity(), 1);
    }

    #[test]
    fn values_are_stored_and_reported_per_thread() {
        let s = BoundedStore::new(100);
        put(&s, "a", 42).unwrap();
        assert_eq!(BoundedStore::last_tat(), 42);
        put(&s, "a", 43).unwrap();
        assert_eq!(BoundedStore::last_tat(), 43);
        assert_eq!(s.len(), 1);
        put(&s, "a", u64::MAX).unwrap();
        assert!(put(&s, "a", 1).is_err());
        assert_eq!(
            BoundedStore::last_tat(),
            u64::MAX,
            "a refusal reports the kept TAT"
        );
    }

    #[test]
    fn a_flood_of_distinct_keys_never_exceeds_the_cap() {
        let s = BoundedStore::new(1000);
        for i in 0..50_000u64 {
            put(&s, &format!("k{i}"), 1_000 + i).unwrap();
            assert!(s.len() <= 1000);
        }
        assert_eq!(s.len(), 1000);
    }

    #[test]
    fn eviction_prefers_the_key_nearest_to_full() {
        // One shard of 5: with 5 samples out of 5 entries the victim is (very nearly always)
        // the smallest TAT; sampling with replacement misses it with p = (4/5)^5 ≈ 0.33, so
        // expect it in about two runs of three. 200 runs make "at least half" ~5 sigma safe
        // (20 runs failed about once in 30).
        let mut kept_busy = 0;
        for _ in 0..200 {
            let s = BoundedStore::new(5);
            put(&s, "idle", 1).unwrap();
            for i in 0..4 {
                put(&s, &format!("busy{i}"), 1_000_000 + i).unwrap();
            }
            put(&s, "new", 2_000_000).unwrap();
            if !contains(&s, "idle") && (0..4).all(|i| contains(&s, &format!("busy{i}"))) {
                kept_busy += 1;
            }
        }
        assert!(
            kept_busy >= 100,
            "idle key evicted first in {kept_busy}/200 runs"
        );
    }

    #[test]
    fn retain_recent_drops_keys_with_full_buckets() {
        let s = BoundedStore::new(100);
        put(&s, "old", 10).unwrap();
        put(&s, "edge", 20).unwrap();
        put(&s, "new", 30).unwrap();
        s.retain_recent(Nanos::from(20));
        assert_eq!(s.len(), 1);
        assert!(contains(&s, "new"));
        s.shrink_to_fit();
        assert!(!s.is_empty());
    }
}
