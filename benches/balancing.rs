//! Target selection cost per request: each algorithm over 100 targets, all healthy and with half
//! of them ejected (the pick then has to skip unavailable targets).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::upstream::{hash64, Cluster};

fn cluster(algorithm: &str) -> Arc<Cluster> {
    let targets: Vec<String> = (0..100)
        .map(|i| {
            format!(
                "{{ address = \"10.0.{}.{}:8080\", weight = {} }}",
                i / 250,
                i % 250 + 1,
                i % 3 + 1
            )
        })
        .collect();
    let hash_on = if algorithm == "ring_hash" {
        "hash_on = \"header:x-user\"\n"
    } else {
        ""
    };
    let toml = format!(
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n\
         [upstreams.svc]\ntargets = [{}]\nbalance = \"{algorithm}\"\n{hash_on}\
         outlier_detection = {{ consecutive_failures = 1, max_ejection_percent = 50, base_ejection_time = \"1h\" }}\n",
        targets.join(", ")
    );
    let registry = tollgate::plugins::builtin_registry();
    let built = match tollgate::config::load_str(Path::new("bench.toml"), &toml, &registry) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    };
    Arc::new(Cluster::new(built.config.upstreams[0].clone()))
}

fn eject_half(c: &Cluster) {
    let set = c.targets();
    for t in set.targets.iter().step_by(2) {
        c.report_failure(t, "bench");
    }
}

fn bench_select(cr: &mut Criterion) {
    let mut group = cr.benchmark_group("select_100_targets");
    for algorithm in ["round_robin", "random", "least_request", "ring_hash"] {
        for half_ejected in [false, true] {
            let c = cluster(algorithm);
            if half_ejected {
                eject_half(&c);
            }
            let name = format!(
                "{algorithm}/{}",
                if half_ejected {
                    "half_ejected"
                } else {
                    "healthy"
                }
            );
            let mut n = 0u64;
            group.bench_function(name, |b| {
                b.iter(|| {
                    n = n.wrapping_add(1);
                    let key = Some(hash64(n));
                    black_box(c.select(black_box(key), &[]))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_select);
criterion_main!(benches);
