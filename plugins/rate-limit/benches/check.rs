//! Cost of one local rate-limit check with 1M live keys: a known key (the common case), and a new
//! key arriving at a full store (a flood of distinct keys, which evicts); the same with 1,000 live
//! keys shows what the check costs when the whole store is in cache.
//!
//! Each iteration writes its key into a reused buffer, as a request builds its key just before
//! the check, so the key is in cache and the time is the store's, not the benchmark's.

use std::hint::black_box;
use std::io::Write;
use std::num::NonZeroU32;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate_rate_limit::LocalLimiter;

const LIVE_KEYS: usize = 1_000_000;

/// A client-address-shaped key for `i`; `tag` keeps key sets apart.
fn write_key(buf: &mut Vec<u8>, tag: u8, i: usize) {
    buf.clear();
    let _ = write!(
        buf,
        "{tag}.{}.{}.{}",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    );
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

fn filled(max_keys: usize, live: usize) -> LocalLimiter {
    let l = limiter(max_keys);
    let mut buf = Vec::new();
    for i in 0..live {
        write_key(&mut buf, 10, i);
        l.check(&buf);
    }
    // Keys spread over the shards by hash, so a store filled to `max_keys` starts evicting a
    // little before it holds that many.
    assert!(l.len() >= live * 99 / 100, "{} keys", l.len());
    l
}

fn checks(c: &mut Criterion) {
    let mut group = c.benchmark_group("local_check");
    let mut buf = Vec::with_capacity(32);

    let live = filled(2 * LIVE_KEYS, LIVE_KEYS);
    // A stride coprime with the key count visits all keys in a cache-unfriendly order, as
    // unrelated clients would.
    let mut i = 0usize;
    group.bench_function("existing_key_1m_live", |b| {
        b.iter(|| {
            i = (i + 7_919) % LIVE_KEYS;
            write_key(&mut buf, 10, i);
            black_box(live.check(&buf))
        })
    });
    drop(live);

    let small = filled(2 * LIVE_KEYS, 1_000);
    let mut s = 0usize;
    group.bench_function("existing_key_1k_live", |b| {
        b.iter(|| {
            s = (s + 7) % 1_000;
            write_key(&mut buf, 10, s);
            black_box(small.check(&buf))
        })
    });

    let full = filled(LIVE_KEYS, LIVE_KEYS);
    let mut j = 0usize;
    group.bench_function("new_key_evicts_1m_live", |b| {
        b.iter(|| {
            j += 1;
            // 11.x.y.z, then 12.x.y.z, ...: never seen before.
            write_key(&mut buf, 11 + (j >> 24) as u8, j & 0xff_ffff);
            black_box(full.check(&buf))
        })
    });
    group.finish();
}

criterion_group!(benches, checks);
criterion_main!(benches);
