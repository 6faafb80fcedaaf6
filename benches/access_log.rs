//! Access log hot path: building one line (`access_log::line`) from a finished request's values,
//! with every field and with a configured subset in its configured order.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};
use tollgate::telemetry::access_log::line;

/// The values of a typical proxied request, in the order the proxy gives them.
fn values() -> Vec<(&'static str, Value)> {
    vec![
        ("time", json!("2026-12-01T10:00:00.123Z")),
        ("request_id", json!("0b8f3c2a-6d1e-4f7a-9c3b-2e5d8a1f4b6c")),
        ("trace_id", Value::Null),
        ("client_ip", json!("127.0.0.1")),
        ("method", json!("GET")),
        ("host", json!("api.example.com")),
        ("path", json!("/api/users/42")),
        ("query", json!("q=1")),
        ("protocol", json!("HTTP/1.1")),
        ("route", json!("users")),
        ("upstream", json!("user-svc")),
        ("target", json!("127.0.0.1:3000")),
        ("status", json!(200)),
        ("bytes_sent", json!(1234)),
        ("bytes_received", json!(0)),
        ("duration_ms", json!(1.234567)),
        ("upstream_ms", json!(1.01)),
        ("attempts", json!(1)),
        ("error", Value::Null),
    ]
}

fn bench_access_log(c: &mut Criterion) {
    let values = values();
    let some: Vec<String> = ["status", "time", "route", "duration_ms"]
        .map(String::from)
        .to_vec();
    let mut group = c.benchmark_group("access_log_line");
    group.bench_function("all_fields", |b| {
        b.iter(|| line(black_box(&[]), black_box(&values)))
    });
    group.bench_function("four_fields", |b| {
        b.iter(|| line(black_box(&some), black_box(&values)))
    });
    group.finish();
}

criterion_group!(benches, bench_access_log);
criterion_main!(benches);
