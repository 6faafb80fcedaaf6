//! `tollgate check` and every reload of a large file: `config::load_str` of 10,000 routes, once
//! all distinct and once all the same prefix (50 million conflicting pairs, of which 20 are
//! described and the rest counted).

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::config;

const ROUTES: usize = 10_000;

/// A config of `ROUTES` prefix routes to one upstream; `path(n)` is route n's prefix.
fn config_text(path: impl Fn(usize) -> String) -> String {
    let mut toml = String::from(
        "[[listeners]]\naddress = \"127.0.0.1:8080\"\n\n\
         [upstreams.svc]\ntargets = [\"127.0.0.1:3000\"]\n\n",
    );
    for n in 0..ROUTES {
        toml.push_str(&format!(
            "[routes.route{n:05}]\nprefix = \"{}\"\nupstream = \"svc\"\n\n",
            path(n)
        ));
    }
    toml
}

fn bench_check(c: &mut Criterion) {
    let registry = tollgate::plugins::builtin_registry();
    let distinct = config_text(|n| format!("/svc{}/area{}", n / 100, n % 100));
    let conflicting = config_text(|_| "/api".to_string());
    let path = Path::new("gateway.toml");
    assert!(config::load_str(path, &distinct, &registry).is_ok());
    let errors = match config::load_str(path, &conflicting, &registry) {
        Ok(_) => panic!("10,000 identical routes must conflict"),
        Err(errors) => errors,
    };
    assert_eq!(errors.0.len(), tollgate::router::LISTED_CONFLICTS + 1);

    let mut group = c.benchmark_group("load_str_10k_routes");
    group.sample_size(10);
    group.bench_function("distinct", |b| {
        b.iter(|| config::load_str(path, black_box(&distinct), &registry).is_ok())
    });
    group.bench_function("all_conflicting", |b| {
        b.iter(|| config::load_str(path, black_box(&conflicting), &registry).is_err())
    });
    group.finish();
}

criterion_group!(benches, bench_check);
criterion_main!(benches);
