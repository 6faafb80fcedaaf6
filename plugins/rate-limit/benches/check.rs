//! Cost of one local rate-limit check with 1M live keys: a known key (the common case), and a new
//! key arriving at a full store (a flood of distinct keys, which evicts).

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate_rate_limit::LocalLimiter;

const LIVE_KEYS: usize = 1_000_000;

fn key(i: usize) -> Vec<u8> {
    // Shaped like a client address key.
    format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff).into_bytes()
}

fn limiter(max_keys: usize) -> LocalLimiter {
    // A slow rate with a large burst: every check below is admitted and no key goes idle.
    LocalLimiter::new(
        "100/min".parse().unwrap(),
        NonZeroU32::new(1_000_000).unwrap(),
        max_keys,
    )
    .unwrap()
}

fn checks(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..LIVE_KEYS).map(key).collect();
    let live = limiter(2 * LIVE_KEYS);
    for k in &keys {
        live.check(k);
    }
    assert_eq!(live.len(), LIVE_KEYS);

    let mut group = c.benchmark_group("local_check");
    // A stride coprime with the key count walks all keys in a cache-unfriendly order, as
    // unrelated clients would.
    let mut i = 0usize;
    group.bench_function("existing_key_1m_live", |b| {
        b.iter(|| {
            i = (i + 7_919) % LIVE_KEYS;
            black_box(live.check(&keys[i]))
        })
    });

    let full = limiter(LIVE_KEYS);
    for k in &keys {
        full.check(k);
    }
    let fresh: Vec<Vec<u8>> = (0..LIVE_KEYS).map(|i| format!("new-{i}").into_bytes()).collect();
    let mut j = 0usize;
    group.bench_function("new_key_evicts_1m_live", |b| {
        b.iter(|| {
            j = (j + 1) % LIVE_KEYS;
            black_box(full.check(&fresh[j]))
        })
    });
    group.finish();
}

criterion_group!(benches, checks);
criterion_main!(benches);
