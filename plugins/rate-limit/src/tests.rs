//! The plugin as gateway.toml configures it: built through the registry, driven phase by phase.

use super::*;
use crate::remote::tests::TestRedis;
use tollgate_plugin_api::{BuildError, BuildErrorKind};
use tollgate_plugin_test::{request, response_header as header};

fn build(src: &str) -> Result<Arc<dyn Plugin>, BuildError> {
    tollgate_plugin_test::build::<RateLimitPlugin>(src)
}

fn build_err(src: &str) -> BuildError {
    tollgate_plugin_test::build_err::<RateLimitPlugin>(src)
}

/// A request of client `ip` on route `orders`.
fn ctx(ip: &str) -> RequestContext {
    let mut c = tollgate_plugin_test::ctx_from(ip);
    c.route = Arc::from("orders");
    c
}

/// Runs the request phase, then the response phase on a 200 (admitted) or on the error's status.
async fn run(
    p: &Arc<dyn Plugin>,
    ctx: &mut RequestContext,
) -> (Result<(), PluginError>, ResponseHeader) {
    let mut req = request("GET", "/", &[]);
    let result = p.on_request(&mut req, ctx).await.map(|flow| {
        assert!(matches!(flow, Flow::Continue));
    });
    let status = result
        .as_ref()
        .err()
        .map(|e| e.status.as_u16())
        .unwrap_or(200);
    let mut resp = ResponseHeader::build(status, None).unwrap();
    p.on_response(&mut resp, ctx);
    (result, resp)
}

#[tokio::test]
async fn burst_is_admitted_then_429_with_retry_after_and_headers() {
    let p = build(r#"{ limits = [{ rate = "1/min", burst = 3 }] }"#).unwrap();
    for expected in [2, 1, 0] {
        let mut c = ctx("192.0.2.1");
        let (result, resp) = run(&p, &mut c).await;
        result.unwrap();
        assert!(c.counts().is_empty());
        assert_eq!(
            header(&resp, "ratelimit-policy").as_deref(),
            Some("\"default\";q=1;w=60")
        );
        assert_eq!(
            header(&resp, "ratelimit"),
            Some(format!("\"default\";r={expected};t=60"))
        );
    }
    let mut c = ctx("192.0.2.1");
    let (result, resp) = run(&p, &mut c).await;
    let err = result.unwrap_err();
    assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(err.code, "rate_limited");
    assert_eq!(c.counts(), [Count::RateLimited]);
    assert!(
        err.message.contains("`default` (1/min, burst 3)"),
        "{}",
        err.message
    );
    let retry: Vec<_> = err
        .headers
        .iter()
        .filter(|(n, _)| n == header::RETRY_AFTER)
        .collect();
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].1, "60");
    assert_eq!(
        header(&resp, "ratelimit").as_deref(),
        Some("\"default\";r=0;t=60")
    );
    // Another client has its own bucket.
    run(&p, &mut ctx("192.0.2.2")).await.0.unwrap();
}

#[tokio::test]
async fn legacy_and_no_headers_modes() {
    let p = build(r#"{ limits = [{ rate = "10/min", burst = 2 }], headers = "legacy" }"#).unwrap();
    let (_, resp) = run(&p, &mut ctx("192.0.2.1")).await;
    assert_eq!(header(&resp, "x-ratelimit-limit").as_deref(), Some("10"));
    assert_eq!(header(&resp, "x-ratelimit-remaining").as_deref(), Some("1"));
    assert_eq!(header(&resp, "x-ratelimit-reset").as_deref(), Some("6"));
    assert!(header(&resp, "ratelimit").is_none());
    assert!(header(&resp, "ratelimit-policy").is_none());

    let p = build(r#"{ limits = [{ rate = "10/min", burst = 1 }], headers = "none" }"#).unwrap();
    let (_, resp) = run(&p, &mut ctx("192.0.2.1")).await;
    assert_eq!(resp.headers.len(), 0);
    let (result, resp) = run(&p, &mut ctx("192.0.2.1")).await;
    let err = result.unwrap_err();
    assert!(err.headers.iter().any(|(n, _)| n == header::RETRY_AFTER));
    assert_eq!(resp.headers.len(), 0);
}

#[tokio::test]
async fn every_limit_must_admit_and_the_429_names_the_one_that_refused() {
    let p = build(
        r#"{ limits = [
            { rate = "100/min", key = "client_ip", name = "per-ip" },
            { rate = "1/min", burst = 2, key = "route", name = "per-route" },
        ] }"#,
    )
    .unwrap();
    let (result, resp) = run(&p, &mut ctx("192.0.2.1")).await;
    result.unwrap();
    assert_eq!(
        header(&resp, "ratelimit-policy").as_deref(),
        Some("\"per-ip\";q=100;w=60, \"per-route\";q=1;w=60")
    );
    assert_eq!(
        header(&resp, "ratelimit").as_deref(),
        Some("\"per-ip\";r=99;t=1, \"per-route\";r=1;t=60")
    );
    // The route's budget is shared by all clients.
    run(&p, &mut ctx("192.0.2.2")).await.0.unwrap();
    let (result, resp) = run(&p, &mut ctx("192.0.2.3")).await;
    let err = result.unwrap_err();
    assert!(err.message.contains("`per-route`"), "{}", err.message);
    assert!(!err.message.contains("`per-ip`"), "{}", err.message);
    assert_eq!(
        header(&resp, "ratelimit").as_deref(),
        Some("\"per-route\";r=0;t=60")
    );
}

#[tokio::test]
async fn missing_key_parts_fall_back_to_the_client_or_skip() {
    let fallback =
        build(r#"{ limits = [{ rate = "1/min", burst = 1, key = "consumer" }] }"#).unwrap();
    let mut alice = ctx("192.0.2.1");
    alice.vars.insert("consumer".into(), "alice".into());
    run(&fallback, &mut alice).await.0.unwrap();
    // Anonymous requests are counted per client address, apart from alice's bucket.
    run(&fallback, &mut ctx("192.0.2.1")).await.0.unwrap();
    assert!(run(&fallback, &mut ctx("192.0.2.1")).await.0.is_err());
    run(&fallback, &mut ctx("192.0.2.9")).await.0.unwrap();

    let skip = build(
        r#"{ limits = [{ rate = "1/min", burst = 1, key = "consumer", missing = "skip" }] }"#,
    )
    .unwrap();
    for _ in 0..5 {
        let (result, resp) = run(&skip, &mut ctx("192.0.2.1")).await;
        result.unwrap();
        // The policy is still announced; no state, since the limit did not apply.
        assert!(header(&resp, "ratelimit-policy").is_some());
        assert!(header(&resp, "ratelimit").is_none());
    }
}

#[tokio::test]
async fn claims_from_jwt_auth_are_keys() {
    let p = build(r#"{ limits = [{ rate = "1/min", burst = 1, key = ["claim:sub", "route"] }] }"#)
        .unwrap();
    let with_sub = |sub: &str| {
        let mut c = ctx("192.0.2.1");
        c.vars.insert("jwt.sub".into(), sub.into());
        c
    };
    run(&p, &mut with_sub("u1")).await.0.unwrap();
    run(&p, &mut with_sub("u2")).await.0.unwrap();
    assert!(run(&p, &mut with_sub("u1")).await.0.is_err());
}

#[tokio::test]
async fn response_of_a_request_the_plugin_never_saw_gets_no_headers() {
    let p = build(r#"{ limits = [{ rate = "10/s" }] }"#).unwrap();
    let mut resp = ResponseHeader::build(401, None).unwrap();
    p.on_response(&mut resp, &mut ctx("192.0.2.1"));
    assert_eq!(resp.headers.len(), 0);
}

#[test]
fn default_burst_is_the_rate_count_and_names_follow_position() {
    let p = RateLimit::from_config(
        toml::from_str(r#"limits = [{ rate = "6000/min" }, { rate = "10/s", key = "route" }]"#)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(p.limits[0].burst.get(), 6000);
    assert_eq!(p.limits[0].name, "limit1");
    assert_eq!(p.limits[1].name, "limit2");
}

#[test]
fn invalid_configs_are_rejected_with_their_reason() {
    for (src, fragment) in [
        ("{ limits = [] }", "at least one limit"),
        (
            r#"{ limits = [{ rate = "1/s" }], max_keys = 0 }"#,
            "`max_keys` must be at least 1",
        ),
        (
            r#"{ limits = [{ rate = "1/s", name = "a" }, { rate = "2/s", name = "a" }] }"#,
            "name `a` is used twice",
        ),
        (
            r#"{ limits = [{ rate = "1/s", name = "my policy" }] }"#,
            "name `my policy` must be",
        ),
        (
            r#"{ limits = [{ rate = "1/d", burst = 400 }] }"#,
            "over a year to refill",
        ),
    ] {
        let err = build_err(src);
        assert_eq!(err.kind, BuildErrorKind::Invalid, "{src}");
        assert!(err.message.contains(fragment), "{src}: {}", err.message);
    }
    for (src, fragment, span_text) in [
        (
            r#"{ limits = [{ rate = "10/fortnight" }] }"#,
            "unknown unit `fortnight`",
            "\"10/fortnight\"",
        ),
        (
            r#"{ limits = [{ rate = "10/s", burst = 0 }] }"#,
            "burst must be",
            "0",
        ),
        (
            r#"{ limits = [{ rate = "10/s" }], backend = { redis = "redis//x" } }"#,
            "invalid Redis URL",
            "\"redis//x\"",
        ),
    ] {
        let err = build_err(src);
        assert_eq!(err.kind, BuildErrorKind::Config, "{src}");
        assert!(err.message.contains(fragment), "{src}: {}", err.message);
        let span = err.span.clone().unwrap();
        assert_eq!(&src[span], span_text, "{src}");
    }
}

/// A Redis-backed limit of 3 per minute. The timeout is far above any answer of a live Redis
/// on a loaded machine (a slow answer must not fail open and admit); a dead one is known at
/// once (connection refused) and never waits for it.
fn redis_config(url: &str, extra: &str) -> String {
    format!(
        r#"{{ limits = [{{ rate = "1/min", burst = 3, key = "route" }}],
             backend = {{ redis = {{ url = "{url}", timeout = "30s", retry_interval = "200ms" {extra} }} }} }}"#
    )
}

fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("redis://127.0.0.1:{port}/0")
}

#[tokio::test]
async fn instances_sharing_redis_share_the_budget() {
    let redis = TestRedis::start();
    let a = build(&redis_config(&redis.url(), "")).unwrap();
    let b = build(&redis_config(&redis.url(), "")).unwrap();
    let mut admitted = 0;
    for i in 0..10 {
        let p = if i % 2 == 0 { &a } else { &b };
        let (result, resp) = run(p, &mut ctx("192.0.2.1")).await;
        match result {
            Ok(()) => {
                admitted += 1;
                assert!(header(&resp, "ratelimit").is_some());
            }
            Err(e) => assert_eq!(e.code, "rate_limited"),
        }
    }
    assert_eq!(admitted, 3, "one burst of 3 for both instances together");
}

#[tokio::test]
async fn unreachable_redis_fails_open_or_closed_as_configured() {
    let open = build(&redis_config(&dead_url(), "")).unwrap();
    for _ in 0..5 {
        let (result, resp) = run(&open, &mut ctx("192.0.2.1")).await;
        result.unwrap();
        assert!(header(&resp, "ratelimit-policy").is_some());
        assert!(header(&resp, "ratelimit").is_none(), "no state to report");
    }
    let closed = build(&redis_config(&dead_url(), r#", on_error = "deny""#)).unwrap();
    let mut c = ctx("192.0.2.1");
    let err = run(&closed, &mut c).await.0.unwrap_err();
    assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(err.code, "rate_limit_unavailable");
    // The limiter's fault, not a limit's verdict: not counted as rate limited.
    assert!(c.counts().is_empty());
    assert!(err
        .headers
        .iter()
        .any(|(n, v)| n == header::RETRY_AFTER && v == "1"));
}

#[tokio::test]
async fn precheck_keeps_limiting_when_redis_is_down() {
    let p = build(&redis_config(&dead_url(), ", local_precheck = true")).unwrap();
    let admitted = {
        let mut n = 0;
        for _ in 0..10 {
            if run(&p, &mut ctx("192.0.2.1")).await.0.is_ok() {
                n += 1;
            }
        }
        n
    };
    assert_eq!(admitted, 3, "fail-open degrades to the per-instance limit");
}

#[tokio::test]
async fn precheck_refuses_without_asking_redis() {
    let redis = TestRedis::start();
    let p = build(&redis_config(&redis.url(), ", local_precheck = true")).unwrap();
    for _ in 0..3 {
        run(&p, &mut ctx("192.0.2.1")).await.0.unwrap();
    }
    // Redis gone: a request the local limiter already refuses does not need it.
    drop(redis);
    let err = run(&p, &mut ctx("192.0.2.1")).await.0.unwrap_err();
    assert_eq!(err.code, "rate_limited");
}

#[tokio::test]
async fn background_sweeps_and_stops_when_told() {
    let p = build(r#"{ limits = [{ rate = "10/s" }] }"#).unwrap();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn({
        let p = p.clone();
        async move { p.background(rx).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("background returns after stop")
        .unwrap();
}
