//! The `rate-limit` plugin through the real gateway binary: GCRA counts, the response headers,
//! keys, the key cap, Redis shared by several gateways, Redis failures, and `tollgate check`.
//!
//! Counts are asserted exactly where no time can pass that matters (slow rates such as 1/min),
//! and with tolerances derived from the measured elapsed time where the rate itself is tested.
//! Wall-clock bounds only catch hangs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{client, expect_error, Gateway, RedisServer, Upstream};
use sha2::{Digest, Sha256};

/// `[upstreams.svc]` and `[routes.api]` (prefix `/api`), then `body`.
fn cfg(up: &Upstream, body: &str) -> String {
    format!(
        r#"
[upstreams.svc]
targets = ["{}"]

[routes.api]
prefix = "/api"
upstream = "svc"
{body}
"#,
        up.addr
    )
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_owned())
}

/// Sends `n` GETs one after the other; returns their statuses.
async fn statuses(c: &reqwest::Client, url: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(c.get(url).send().await.expect("request").status().as_u16());
    }
    out
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

// ---------------------------------------------------------------------------------------------
// GCRA counts and headers (local mode)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn burst_then_steady_rate_follow_the_gcra() {
    let up = Upstream::echo("svc").await;
    // 4/s: one unit per 250 ms, far longer than six requests over loopback take.
    let gw = Gateway::start(&cfg(
        &up,
        r#"
[routes.api.plugins.rate-limit]
limits = [{ rate = "4/s", burst = 5 }]
"#,
    ))
    .await;
    let c = client();
    let url = gw.url("/api/x");

    // Six at once: the burst of five passes, the sixth is refused. Sent concurrently so that
    // they are all decided within a few milliseconds, far less than one interval (250 ms); the
    // slack only covers a machine so loaded that the batch takes longer than that.
    let started = Instant::now();
    let sends = (0..6).map(|_| c.get(&url).send());
    let mut refusals = Vec::new();
    let mut admitted = 0;
    for resp in futures_util::future::join_all(sends).await {
        let resp = resp.expect("request");
        match resp.status().as_u16() {
            200 => admitted += 1,
            _ => refusals.push(resp),
        }
    }
    let slack = (started.elapsed().as_millis() / 250) as usize;
    assert!(
        (5..=5 + slack).contains(&admitted),
        "{admitted} of 6 admitted"
    );
    assert_eq!(admitted + refusals.len(), 6);
    // The bucket is empty now: the next request is refused, with the wait rounded up to 1 s.
    let mut next = refusals.pop();
    for _ in 0..10 {
        if next.is_some() {
            break;
        }
        let resp = c.get(&url).send().await.expect("request");
        if resp.status() == 200 {
            admitted += 1;
        } else {
            next = Some(resp);
        }
    }
    let resp = next.expect("a refusal once the burst is spent");
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("1"));
    expect_error(resp, 429, "rate_limited").await;
    assert_eq!(
        up.requests(),
        admitted,
        "refused requests never reach the upstream"
    );

    // One second refills 4 units (the bucket holds 5): a quick batch gets exactly those, plus
    // at most one more if the batch itself took over 250 ms.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let started = Instant::now();
    let batch = statuses(&c, &url, 12).await;
    let extra = usize::from(started.elapsed() > Duration::from_millis(200));
    let admitted = count(&batch, 200);
    assert!(
        (4..=4 + extra + 1).contains(&admitted),
        "admitted {admitted} after 1 s: {batch:?}"
    );
    assert_eq!(count(&batch, 429), 12 - admitted);

    // Steady offered load well above the rate: admissions follow the rate.
    let started = Instant::now();
    let mut admitted = 0usize;
    while started.elapsed() < Duration::from_millis(2_000) {
        if c.get(&url).send().await.expect("request").status() == 200 {
            admitted += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected = 4.0 * started.elapsed().as_secs_f64();
    assert!(
        (admitted as f64 - expected).abs() <= 3.0,
        "admitted {admitted}, expected about {expected:.1}"
    );
}

#[tokio::test]
async fn draft_headers_on_upstream_responses_and_on_the_429() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&cfg(
        &up,
        r#"
[routes.api.plugins.rate-limit]
limits = [{ rate = "1/min", burst = 2 }]
"#,
    ))
    .await;
    let c = client();
    // 1/min: the next unit is 60 s away for the whole test, so every value is exact.
    for remaining in [1, 0] {
        let resp = c.get(gw.url("/api/x")).send().await.expect("request");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "ratelimit-policy").as_deref(),
            Some("\"default\";q=1;w=60")
        );
        assert_eq!(
            header(&resp, "ratelimit"),
            Some(format!("\"default\";r={remaining};t=60"))
        );
        let body: serde_json::Value = resp.json().await.expect("echo body");
        assert_eq!(body["upstream"], "svc", "the upstream's own response");
    }
    let resp = c.get(gw.url("/api/x")).send().await.expect("request");
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("60"));
    assert_eq!(
        header(&resp, "ratelimit-policy").as_deref(),
        Some("\"default\";q=1;w=60")
    );
    assert_eq!(
        header(&resp, "ratelimit").as_deref(),
        Some("\"default\";r=0;t=60")
    );
    let body = expect_error(resp, 429, "rate_limited").await;
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("`default` (1/min, burst 2)"), "{message}");
}

#[tokio::test]
async fn legacy_headers_option() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&cfg(
        &up,
        r#"
[routes.api.plugins.rate-limit]
limits = [{ rate = "6/min", burst = 2 }]
headers = "legacy"
"#,
    ))
    .await;
    let c = client();
    let resp = c.get(gw.url("/api/x")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-ratelimit-limit").as_deref(), Some("6"));
    assert_eq!(header(&resp, "x-ratelimit-remaining").as_deref(), Some("1"));
    assert_eq!(header(&resp, "x-ratelimit-reset").as_deref(), Some("10"));
    assert_eq!(header(&resp, "ratelimit"), None);
    assert_eq!(header(&resp, "ratelimit-policy"), None);
    c.get(gw.url("/api/x")).send().await.expect("request");
    let resp = c.get(gw.url("/api/x")).send().await.expect("request");
    assert_eq!(header(&resp, "x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("10"));
    expect_error(resp, 429, "rate_limited").await;
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn header_key_gives_each_value_its_own_bucket() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&cfg(
        &up,
        r#"
[routes.api.plugins.rate-limit]
limits = [{ rate = "1/min", burst = 2, key = "header:x-tenant" }]
"#,
    ))
    .await;
    let c = client();
    let as_tenant = |t: &'static str| c.get(gw.url("/api/x")).header("x-tenant", t);
    for t in ["acme", "globex"] {
        for _ in 0..2 {
            assert_eq!(as_tenant(t).send().await.expect("req").status(), 200);
        }
    }
    expect_error(
        as_tenant("acme").send().await.expect("req"),
        429,
        "rate_limited",
    )
    .await;
    // No header: counted by client address, apart from every tenant.
    assert_eq!(statuses(&c, &gw.url("/api/x"), 3).await, [200, 200, 429]);
}

#[tokio::test]
async fn client_ip_key_uses_the_address_behind_a_trusted_proxy() {
    let up = Upstream::echo("svc").await;
    let body = format!(
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{}",
        cfg(
            &up,
            r#"
[routes.api.plugins.rate-limit]
limits = [{ rate = "1/min", burst = 1, key = "client_ip" }]
"#
        )
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    let via = |ip: &'static str| c.get(gw.url("/api/x")).header("x-forwarded-for", ip);
    assert_eq!(via("198.51.100.1").send().await.expect("req").status(), 200);
    assert_eq!(via("198.51.100.2").send().await.expect("req").status(), 200);
    expect_error(
        via("198.51.100.1").send().await.expect("req"),
        429,
        "rate_limited",
    )
    .await;
    // A spoofed hop to the left of the client's address does not make a new client.
    let resp = via("203.0.113.9, 198.51.100.2").send().await.expect("req");
    expect_error(resp, 429, "rate_limited").await;
}

#[tokio::test]
async fn composite_consumer_and_route_key() {
    let up = Upstream::echo("svc").await;
    let sha = |k: &str| hex::encode(Sha256::digest(k.as_bytes()));
    let auth_and_limit = |route: &str| {
        format!(
            r#"
[routes.{route}.plugins.key-auth]
consumers = [{{ name = "alice", key_sha256 = "{}" }}, {{ name = "bob", key_sha256 = "{}" }}]

[routes.{route}.plugins.rate-limit]
limits = [{{ rate = "1/min", burst = 2, key = ["consumer", "route"], name = "per-consumer" }}]
"#,
            sha("alice-key"),
            sha("bob-key")
        )
    };
    let body = format!(
        "{}\n[routes.other]\nprefix = \"/other\"\nupstream = \"svc\"\n{}\n{}",
        cfg(&up, ""),
        auth_and_limit("api"),
        auth_and_limit("other")
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    let get = |path: &str, key: &'static str| c.get(gw.url(path)).header("x-api-key", key);
    for _ in 0..2 {
        assert_eq!(
            get("/api/x", "alice-key")
                .send()
                .await
                .expect("req")
                .status(),
            200
        );
    }
    expect_error(
        get("/api/x", "alice-key").send().await.expect("req"),
        429,
        "rate_limited",
    )
    .await;
    // Same consumer, other route; other consumer, same route: their own budgets.
    assert_eq!(
        get("/other/x", "alice-key")
            .send()
            .await
            .expect("req")
            .status(),
        200
    );
    assert_eq!(
        get("/api/x", "bob-key").send().await.expect("req").status(),
        200
    );
    // Refused by key-auth first: not counted, no rate-limit headers.
    let resp = get("/api/x", "wrong").send().await.expect("req");
    assert_eq!(header(&resp, "ratelimit"), None);
    expect_error(resp, 401, "invalid_api_key").await;
}

#[tokio::test]
async fn path_parameter_key() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&format!(
        r#"
[upstreams.svc]
targets = ["{}"]

[routes.users]
template = "/users/{{id}}"
upstream = "svc"

[routes.users.plugins.rate-limit]
limits = [{{ rate = "1/min", burst = 1, key = "param:id" }}]
"#,
        up.addr
    ))
    .await;
    let c = client();
    assert_eq!(statuses(&c, &gw.url("/users/1"), 2).await, [200, 429]);
    assert_eq!(statuses(&c, &gw.url("/users/2"), 2).await, [200, 429]);
}

#[tokio::test]
async fn a_flood_of_distinct_keys_is_bounded_and_keeps_busy_keys() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&cfg(
        &up,
        r#"
[routes.api.plugins.rate-limit]
limits = [{ rate = "1/min", burst = 2, key = "header:x-client" }]
max_keys = 50
"#,
    ))
    .await;
    let c = client();
    let as_client = |k: String| c.get(gw.url("/api/x")).header("x-client", k);
    // A busy key, its bucket empty: the last one the sampled eviction picks.
    assert_eq!(
        as_client("busy".into()).send().await.expect("req").status(),
        200
    );
    assert_eq!(
        as_client("busy".into()).send().await.expect("req").status(),
        200
    );

    // 2000 distinct keys against a cap of 50, 16 at a time.
    let mut admitted = 0;
    for batch in 0..125 {
        let sends = (0..16).map(|i| as_client(format!("flood-{batch}-{i}")).send());
        for resp in futures_util::future::join_all(sends).await {
            if resp.expect("req").status() == 200 {
                admitted += 1;
            }
        }
    }
    assert_eq!(admitted, 2000, "every new key starts with a full bucket");
    // Still serving, and still limiting the busy key.
    expect_error(
        as_client("busy".into()).send().await.expect("req"),
        429,
        "rate_limited",
    )
    .await;
    assert_eq!(
        as_client("fresh".into())
            .send()
            .await
            .expect("req")
            .status(),
        200
    );
}

// ---------------------------------------------------------------------------------------------
// Redis: shared budget, failures
// ---------------------------------------------------------------------------------------------

fn redis_limit(url: &str, limits: &str, options: &str) -> String {
    format!(
        r#"
[routes.api.plugins.rate-limit]
limits = [{limits}]

[routes.api.plugins.rate-limit.backend.redis]
url = "{url}"
{options}
"#
    )
}

/// Three gateways on one Redis, hammered together for about `window` by two clients each:
/// returns (admitted, refused, seconds from the first request sent to the last answer).
///
/// Clients connect (through the unlimited `/warm` route) before the clock starts, so that the
/// window measures rate-limited traffic only.
async fn hammer_three(gateways: &[Gateway], window: Duration) -> (usize, usize, f64) {
    let clients = 2 * gateways.len();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = Vec::new();
    for gw in gateways {
        for _ in 0..2 {
            let (url, warm) = (gw.url("/api/x"), gw.url("/warm/x"));
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let c = client();
                assert_eq!(c.get(&warm).send().await.expect("warm-up").status(), 200);
                barrier.wait().await;
                let first = Instant::now();
                let deadline = first + window;
                let (mut ok, mut refused) = (0usize, 0usize);
                // Bounded by time and by count.
                for _ in 0..100_000 {
                    if Instant::now() >= deadline {
                        break;
                    }
                    match c.get(&url).send().await.expect("request").status().as_u16() {
                        200 => ok += 1,
                        429 => refused += 1,
                        other => panic!("unexpected status {other}"),
                    }
                }
                (ok, refused, first, Instant::now())
            }));
        }
    }
    let (mut ok, mut refused) = (0, 0);
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for t in tasks {
        let (o, r, f, l) = t.await.expect("task");
        ok += o;
        refused += r;
        first = Some(first.map_or(f, |x| x.min(f)));
        last = Some(last.map_or(l, |x| x.max(l)));
    }
    let span = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    (ok, refused, span)
}

async fn shared_budget_within_five_percent(options: &str) {
    let redis = RedisServer::start();
    let up = Upstream::echo("svc").await;
    let body = cfg(
        &up,
        &redis_limit(
            &redis.url(),
            // A burst of one second's worth: a scheduling stall of the test machine shorter than
            // that wastes no unit, so the load stays "continuous" for the GCRA.
            r#"{ rate = "100/s", burst = 100, key = "route" }"#,
            options,
        ),
    );
    let body = format!("{body}\n[routes.warm]\nprefix = \"/warm\"\nupstream = \"svc\"\n");
    let gateways = vec![
        Gateway::start(&body).await,
        Gateway::start(&body).await,
        Gateway::start(&body).await,
    ];
    let (admitted, refused, elapsed) = hammer_three(&gateways, Duration::from_secs(3)).await;
    // GCRA: the burst, then one per interval, over the time the requests were being decided.
    let budget = 100.0 + 100.0 * elapsed;
    let error = (admitted as f64 - budget).abs() / budget;
    eprintln!("shared budget: {admitted} admitted, {refused} refused in {elapsed:.3} s; budget {budget:.1}");
    assert!(
        refused > admitted,
        "the load must exceed the rate: {admitted} admitted, {refused} refused"
    );
    assert!(
        error <= 0.05,
        "admitted {admitted} ({refused} refused) in {elapsed:.2} s, budget {budget:.0} ({:.1}% off)",
        error * 100.0
    );
    assert_eq!(
        up.requests(),
        admitted + gateways.len() * 2,
        "admitted and warm-up requests"
    );
}

#[tokio::test]
async fn three_gateways_on_one_redis_admit_the_budget_within_five_percent() {
    shared_budget_within_five_percent("").await;
}

#[tokio::test]
async fn local_precheck_keeps_the_shared_budget_within_five_percent() {
    shared_budget_within_five_percent("local_precheck = true").await;
}

#[tokio::test]
async fn redis_killed_fails_open_or_closed_quickly_and_recovers() {
    let redis = RedisServer::start();
    let port = redis.port;
    let up = Upstream::echo("svc").await;
    let limits = r#"{ rate = "1/min", burst = 3, key = "route" }"#;
    let open = Gateway::start(&cfg(
        &up,
        &redis_limit(
            &redis.url(),
            limits,
            "prefix = \"open:\"\nretry_interval = \"300ms\"",
        ),
    ))
    .await;
    let closed = Gateway::start(&cfg(
        &up,
        &redis_limit(
            &redis.url(),
            limits,
            "prefix = \"closed:\"\nretry_interval = \"300ms\"\non_error = \"deny\"",
        ),
    ))
    .await;
    let c = client();
    assert_eq!(
        statuses(&c, &open.url("/api/x"), 4).await,
        [200, 200, 200, 429]
    );
    assert_eq!(
        statuses(&c, &closed.url("/api/x"), 4).await,
        [200, 200, 200, 429]
    );

    drop(redis);
    for _ in 0..5 {
        let started = Instant::now();
        let resp = c.get(open.url("/api/x")).send().await.expect("request");
        assert_eq!(resp.status(), 200, "fail-open admits");
        assert_eq!(header(&resp, "ratelimit"), None, "no state to report");
        assert!(started.elapsed() < Duration::from_secs(2), "hang");

        let started = Instant::now();
        let resp = c.get(closed.url("/api/x")).send().await.expect("request");
        assert_eq!(header(&resp, "retry-after").as_deref(), Some("1"));
        expect_error(resp, 503, "rate_limit_unavailable").await;
        assert!(started.elapsed() < Duration::from_secs(2), "hang");
    }

    // Back (empty: nothing was saved), it is used again within a few retry intervals.
    let _redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = c
            .get(closed.url("/api/x"))
            .send()
            .await
            .expect("request")
            .status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "the gateway did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn hung_redis_costs_at_most_the_timeout() {
    let redis = RedisServer::start();
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&cfg(
        &up,
        &redis_limit(
            &redis.url(),
            r#"{ rate = "100/s", key = "route" }"#,
            "timeout = \"100ms\"\nretry_interval = \"500ms\"\non_error = \"deny\"",
        ),
    ))
    .await;
    let c = client();
    assert_eq!(
        c.get(gw.url("/api/x")).send().await.expect("req").status(),
        200
    );

    // Stopped: connections are accepted by the kernel, nothing is ever answered.
    redis.signal("-STOP");
    for _ in 0..5 {
        let started = Instant::now();
        let resp = c.get(gw.url("/api/x")).send().await.expect("request");
        expect_error(resp, 503, "rate_limit_unavailable").await;
        assert!(started.elapsed() < Duration::from_secs(2), "hang");
    }
    redis.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get(gw.url("/api/x")).send().await.expect("req").status() != 200 {
        assert!(Instant::now() < deadline, "the gateway did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// `tollgate check`
// ---------------------------------------------------------------------------------------------

/// Runs `tollgate check -c FILE` on `toml` plus a listener; returns (exit code, stderr, path).
fn check(toml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!("{toml}\n[[listeners]]\naddress = \"127.0.0.1:18080\"\n"),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run tollgate check");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

#[track_caller]
fn assert_check_error(toml: &str, line: usize, col: usize, fragment: &str) {
    let (code, stderr, path) = check(toml);
    assert_eq!(code, 1, "{stderr}");
    let position = format!("{path}:{line}:{col}: ");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&position) && l.contains(fragment)),
        "expected `{position}...{fragment}...`, got:\n{stderr}"
    );
}

const ROUTE: &str = "[upstreams.svc]\ntargets = [\"127.0.0.1:9\"]\n\n[routes.api]\nprefix = \"/api\"\nupstream = \"svc\"\n\n";

#[test]
fn check_reports_an_unknown_rate_unit_at_the_value() {
    // Line 9 of the file; the value starts at column 20.
    assert_check_error(
        &format!(
            "{ROUTE}[routes.api.plugins.rate-limit]\nlimits = [{{ rate = \"10/fortnight\" }}]\n"
        ),
        9,
        20,
        "unknown unit `fortnight`",
    );
}

#[test]
fn check_reports_burst_zero_at_the_value() {
    assert_check_error(
        &format!(
            "{ROUTE}[routes.api.plugins.rate-limit]\nlimits = [{{ rate = \"10/s\", burst = 0 }}]\n"
        ),
        9,
        36,
        "burst must be a whole number from 1",
    );
}

#[test]
fn check_reports_a_malformed_redis_url_at_the_value() {
    assert_check_error(
        &format!(
            "{ROUTE}[routes.api.plugins.rate-limit]\nlimits = [{{ rate = \"10/s\" }}]\n\n\
             [routes.api.plugins.rate-limit.backend.redis]\nurl = \"redis//cache:6379\"\n"
        ),
        12,
        7,
        "invalid Redis URL `redis//cache:6379`",
    );
}
