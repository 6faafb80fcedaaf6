//! Routing hot path: `RouteTable::match_request` on a 1,000-route table, and `normalize_path`.
//!
//! The table mixes ~400 prefixes, ~300 exact paths and ~300 templates across 40 services, with
//! some routes limited to an exact or wildcard host and some to a method list, so every lookup
//! pays for host resolution and for the precedence walk as it would in production.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use tollgate::router::{normalize_path, HostMatch, PathMatch, RouteSpec, RouteTable};

const SERVICES: usize = 40;

fn route_specs() -> Vec<RouteSpec> {
    let mut specs = Vec::new();
    let mut add = |path: PathMatch, host: Option<&str>, methods: Option<Vec<Method>>| {
        let id = specs.len();
        specs.push(RouteSpec {
            id,
            name: format!("route-{id}"),
            host: host.map(HostMatch::parse),
            path,
            methods,
            headers: Vec::new(),
        });
    };
    for svc in 0..SERVICES {
        // Ten prefixes per service, some shallow and some deep.
        for area in 0..10 {
            let path = if area < 5 {
                format!("/svc{svc}/area{area}")
            } else {
                format!("/svc{svc}/area{area}/sub/deep{area}/")
            };
            let host = match area {
                3 => Some(format!("api{svc}.example.com")),
                4 => Some(format!("*.tenant{svc}.example.com")),
                _ => None,
            };
            add(PathMatch::Prefix(path), host.as_deref(), None);
        }
        // Seven exact paths per service, one of them GET-only.
        for page in 0..6 {
            add(
                PathMatch::Exact(format!("/svc{svc}/pages/page{page}/index")),
                None,
                None,
            );
        }
        add(
            PathMatch::Exact(format!("/svc{svc}/health")),
            None,
            Some(vec![Method::GET]),
        );
        // Six templates of assorted shapes per service, plus a POST-only sibling.
        let templates = [
            "/users/{id}",
            "/users/{id}/profile",
            "/users/me/{tab}",
            "/orgs/{org}/repos/{repo}/issues/{n}",
            "/files/{bucket}/{key}/meta",
            "/items/{item}",
        ];
        for template in templates {
            add(
                PathMatch::Template(format!("/svc{svc}{template}")),
                None,
                None,
            );
        }
        add(
            PathMatch::Template(format!("/svc{svc}/items/{{item}}")),
            None,
            Some(vec![Method::POST]),
        );
    }
    // Top up to the target mix with host-specific exact routes and more prefixes.
    for n in 0..(300 - SERVICES * 7) {
        add(
            PathMatch::Exact(format!("/hosted/{n}")),
            Some(&format!("api{}.example.com", n % SERVICES)),
            None,
        );
    }
    for n in 0..(1000 - 400 - 300 - SERVICES * 7) {
        add(PathMatch::Template(format!("/legacy{n}/{{x}}")), None, None);
    }
    specs
}

fn bench_routing(c: &mut Criterion) {
    let specs = route_specs();
    assert_eq!(specs.len(), 1000);
    let table = match RouteTable::build(specs) {
        Ok(table) => table,
        Err(errors) => panic!("bench routes must compile: {errors:#?}"),
    };
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    headers.insert("accept", HeaderValue::from_static("application/json"));
    let host = Some("Gateway.Example.com:8443");

    let cases = [
        ("exact_hit", "/svc17/pages/page3/index", Some(17)),
        (
            "template_hit_3_params",
            "/svc23/orgs/acme/repos/widgets/issues/4711",
            Some(23),
        ),
        (
            "deep_prefix_hit",
            "/svc31/area8/sub/deep8/a/b/c/d/e/f",
            Some(31),
        ),
        ("miss", "/nowhere/to/be/found/at/all", None),
    ];
    let mut group = c.benchmark_group("match_request");
    for (name, path, expect_svc) in cases {
        let found = table.match_request(&Method::GET, host, path, &headers);
        assert_eq!(found.is_some(), expect_svc.is_some(), "{name}: {path}");
        group.bench_function(name, |b| {
            b.iter(|| {
                table.match_request(
                    black_box(&Method::GET),
                    black_box(host),
                    black_box(path),
                    black_box(&headers),
                )
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("normalize_path");
    for (name, path) in [
        ("clean", "/svc23/orgs/acme/repos/widgets/issues/4711"),
        (
            "dirty",
            "//svc23/./orgs/%61cme/x/../repos/%7ewidgets%2fv2/issues//4711/",
        ),
    ] {
        group.bench_function(name, |b| b.iter(|| normalize_path(black_box(path))));
    }
    group.finish();
}

criterion_group!(benches, bench_routing);
criterion_main!(benches);
