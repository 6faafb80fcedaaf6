//! The `rate-limit` plugin through the real gateway binary: GCRA counts, the response headers,
//! keys, the key cap, Redis shared by several gateways, Redis failures, and `tollgate check`.
//!
//! Every assertion holds however slow the machine is. Counts are exact because no unit can come
//! back during the test (rates of 1/min and slower), or because the test waits for a whole
//! interval before it expects one. Waits the gateway reports (`t`, `Retry-After`) are checked
//! against bounds from the measured time since the request that started them. Wall-clock bounds
//! only catch hangs.

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

/// A header holding a whole number of seconds.
fn seconds(resp: &reqwest::Response, name: &str) -> u64 {
    let v = header(resp, name).unwrap_or_else(|| panic!("no `{name}` header"));
    v.parse()
        .unwrap_or_else(|_| panic!("`{name}: {v}` is not whole seconds"))
}

/// The `r` and `t` of a one-item `RateLimit` field of policy `name`: `"name";r=R;t=T`.
fn ratelimit_item(resp: &reqwest::Response, name: &str) -> (u64, u64) {
    let v = header(resp, "ratelimit").expect("a RateLimit header");
    let rest = v
        .strip_prefix(&format!("\"{name}\";"))
        .unwrap_or_else(|| panic!("RateLimit `{v}` is not for `{name}`"));
    let param = |key: &str| -> u64 {
        rest.split(';')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("no `{key}` in RateLimit `{v}`"))
    };
    (param("r"), param("t"))
}

/// A wait in whole seconds (rounded up) that the gateway computed as `interval` minus the time
/// since it decided a request sent after `since`: between `interval` minus the time that has
/// passed since `since` (rounded up), and `interval`.
#[track_caller]
fn assert_wait(got: u64, interval: u64, since: Instant) {
    let passed = since.elapsed().as_secs_f64().ceil() as u64;
    let lowest = interval.saturating_sub(passed);
    assert!(
        (lowest..=interval).contains(&got),
        "a wait of {got} s, expected {lowest}..={interval} ({passed} s passed)"
    );
}

// ---------------------------------------------------------------------------------------------
// GCRA counts and headers (local mode)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_full_bucket_admits_the_burst_at_once_then_refuses() {
    let up = Upstream::echo("svc").await;
    // 1/min: no unit comes back during the test, so exactly the burst is admitted.
    let gw = Gateway::start(&cfg(
        &up,
        r#"
[routes.api.plugins.rate-limit]
limits = [{ rate = "1/min", burst = 5 }]
"#,
    ))
    .await;
    let c = client();
    let url = gw.url("/api/x");
    let started = Instant::now();
    let sends = (0..6).map(|_| c.get(&url).send());
    let mut refusals = Vec::new();
    for resp in futures_util::future::join_all(sends).await {
        let resp = resp.expect("request");
        if resp.status() != 200 {
            refusals.push(resp);
        }
    }
    assert_eq!(refusals.len(), 1, "six at once against a burst of five");
    let resp = refusals.remove(0);
    // The next unit comes one interval after the first admission.
    assert_wait(seconds(&resp, "retry-after"), 60, started);
    expect_error(resp, 429, "rate_limited").await;
    assert_eq!(
        up.requests(),
        5,
        "refused requests never reach the upstream"
    );
}

#[tokio::test]
async fn after_the_burst_one_request_is_admitted_per_interval() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&cfg(
        &up,
        r#"
[routes.api.plugins.rate-limit]
limits = [{ rate = "2/s", burst = 1 }]
"#,
    ))
    .await;
    let c = client();
    let url = gw.url("/api/x");
    let interval = Duration::from_millis(500);
    // With a burst of one the GCRA admits a request exactly when one interval has passed since
    // the last admission. The client knows each decision only to within its request's send and
    // receive times, so: a request sent an interval after the last admission's answer must be
    // admitted, one answered within an interval of the last admission's sending must be
    // refused, and one in between may go either way.
    let first = Instant::now();
    let resp = c.get(&url).send().await.expect("request");
    assert_eq!(resp.status(), 200, "the first request finds a full bucket");
    let mut last = (first, Instant::now());
    let mut admitted = 1;
    for round in 0..4 {
        for wait in [false, true] {
            if wait {
                tokio::time::sleep_until((last.1 + interval).into()).await;
            }
            let sent = Instant::now();
            let resp = c.get(&url).send().await.expect("request");
            let answered = Instant::now();
            if resp.status() == 200 {
                assert!(
                    answered >= last.0 + interval,
                    "round {round}: admitted within one interval of the last admission"
                );
                admitted += 1;
                last = (sent, answered);
            } else {
                assert!(
                    sent < last.1 + interval,
                    "round {round}: refused a whole interval after the last admission"
                );
                // Less than an interval to wait, rounded up.
                assert_eq!(header(&resp, "retry-after").as_deref(), Some("1"));
                expect_error(resp, 429, "rate_limited").await;
            }
        }
    }
    let intervals = first.elapsed().as_millis() / interval.as_millis();
    assert!(
        admitted as u128 <= 1 + intervals,
        "{admitted} admitted in {intervals} intervals"
    );
    assert_eq!(up.requests(), admitted);
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
    // 1/min: no unit comes back during the test, so every `r` is exact; `t` counts down from
    // the first request.
    let started = Instant::now();
    for remaining in [1, 0] {
        let resp = c.get(gw.url("/api/x")).send().await.expect("request");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "ratelimit-policy").as_deref(),
            Some("\"default\";q=1;w=60")
        );
        let (r, t) = ratelimit_item(&resp, "default");
        assert_eq!(r, remaining);
        assert_wait(t, 60, started);
        let body: serde_json::Value = resp.json().await.expect("echo body");
        assert_eq!(body["upstream"], "svc", "the upstream's own response");
    }
    let resp = c.get(gw.url("/api/x")).send().await.expect("request");
    assert_wait(seconds(&resp, "retry-after"), 60, started);
    assert_eq!(
        header(&resp, "ratelimit-policy").as_deref(),
        Some("\"default\";q=1;w=60")
    );
    let (r, t) = ratelimit_item(&resp, "default");
    assert_eq!(r, 0);
    assert_wait(t, 60, started);
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
limits = [{ rate = "60/h", burst = 2 }]
headers = "legacy"
"#,
    ))
    .await;
    let c = client();
    // One unit per minute: none comes back during the test.
    let started = Instant::now();
    let resp = c.get(gw.url("/api/x")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-ratelimit-limit").as_deref(), Some("60"));
    assert_eq!(header(&resp, "x-ratelimit-remaining").as_deref(), Some("1"));
    assert_wait(seconds(&resp, "x-ratelimit-reset"), 60, started);
    assert_eq!(header(&resp, "ratelimit"), None);
    assert_eq!(header(&resp, "ratelimit-policy"), None);
    c.get(gw.url("/api/x")).send().await.expect("request");
    let resp = c.get(gw.url("/api/x")).send().await.expect("request");
    assert_eq!(header(&resp, "x-ratelimit-remaining").as_deref(), Some("0"));
    assert_wait(seconds(&resp, "retry-after"), 60, started);
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
    // 1/d: the busy key's bucket stays empty however long the 2000 requests take.
    let gw = Gateway::start(&cfg(
        &up,
        r#"
[routes.api.plugins.rate-limit]
limits = [{ rate = "1/d", burst = 2, key = "header:x-client" }]
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

/// Three gateways on one Redis, each sent `per_client` requests by each of two clients at
/// once: returns (admitted, refused). Clients connect through the unlimited `/warm` route first.
async fn hammer_three(gateways: &[Gateway], per_client: usize) -> (usize, usize) {
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
                let (mut ok, mut refused) = (0usize, 0usize);
                for _ in 0..per_client {
                    let resp = c.get(&url).send().await.expect("request");
                    match resp.status().as_u16() {
                        200 => ok += 1,
                        429 => refused += 1,
                        other => panic!(
                            "unexpected status {other}: {}",
                            resp.text().await.unwrap_or_default()
                        ),
                    }
                }
                (ok, refused)
            }));
        }
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (o, r) = t.await.expect("task");
        ok += o;
        refused += r;
    }
    (ok, refused)
}

/// Scripts Redis ran to the end: EVALSHA and EVAL calls less the failed ones (an EVALSHA that
/// met an empty script cache is failed and followed by an EVAL).
fn script_runs(redis: &RedisServer) -> u64 {
    let stats = redis.info("commandstats");
    ["evalsha", "eval"]
        .iter()
        .filter_map(|cmd| {
            let line = stats
                .lines()
                .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))?;
            let field = |name: &str| -> u64 {
                line.split([':', ','])
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                    .unwrap_or(0)
            };
            Some(field("calls") - field("failed_calls"))
        })
        .sum()
}

/// Three gateways share one budget of 100 (a burst of 100 at 1/d, so nothing refills during
/// the test) and are sent 600 requests at once: exactly 100 are admitted, whatever the timing.
/// Returns how many decisions reached Redis.
async fn three_gateways_share_one_budget(options: &str) -> u64 {
    let redis = RedisServer::start();
    let up = Upstream::echo("svc").await;
    let body = cfg(
        &up,
        &redis_limit(
            &redis.url(),
            r#"{ rate = "1/d", burst = 100, key = "route" }"#,
            // Redis decides every request: a slow answer must not turn into an admission or a
            // refusal of its own (a timeout would answer 503 here, failing the test loudly).
            &format!("timeout = \"30s\"\non_error = \"deny\"\n{options}"),
        ),
    );
    let body = format!("{body}\n[routes.warm]\nprefix = \"/warm\"\nupstream = \"svc\"\n");
    let gateways = vec![
        Gateway::start(&body).await,
        Gateway::start(&body).await,
        Gateway::start(&body).await,
    ];
    let (admitted, refused) = hammer_three(&gateways, 100).await;
    assert_eq!(
        (admitted, refused),
        (100, 500),
        "admitted, refused of 600 against one budget of 100"
    );
    assert_eq!(
        up.requests(),
        admitted + gateways.len() * 2,
        "admitted and warm-up requests"
    );
    script_runs(&redis)
}

#[tokio::test]
async fn three_gateways_on_one_redis_admit_exactly_one_budget() {
    let runs = three_gateways_share_one_budget("").await;
    assert_eq!(runs, 600, "Redis decides every request");
}

#[tokio::test]
async fn local_precheck_refuses_without_redis_and_keeps_the_shared_budget_exact() {
    let runs = three_gateways_share_one_budget("local_precheck = true").await;
    // Each gateway's own bucket (the same burst of 100) lets its first 100 of 200 through to
    // Redis and refuses the rest itself.
    assert_eq!(runs, 300, "decisions that reached Redis");
}

#[tokio::test]
async fn redis_killed_fails_open_or_closed_quickly_and_recovers() {
    let redis = RedisServer::start();
    let port = redis.port;
    let up = Upstream::echo("svc").await;
    let limits = r#"{ rate = "1/min", burst = 3, key = "route" }"#;
    // A timeout far above any answer of a live Redis, however loaded the machine: only a dead
    // Redis makes the gateway fall back, and a dead one is known at once (connection refused),
    // not after the timeout.
    let open = Gateway::start(&cfg(
        &up,
        &redis_limit(
            &redis.url(),
            limits,
            "prefix = \"open:\"\ntimeout = \"30s\"\nretry_interval = \"300ms\"",
        ),
    ))
    .await;
    let closed = Gateway::start(&cfg(
        &up,
        &redis_limit(
            &redis.url(),
            limits,
            "prefix = \"closed:\"\ntimeout = \"30s\"\nretry_interval = \"300ms\"\non_error = \"deny\"",
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
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited for the timeout"
        );

        let started = Instant::now();
        let resp = c.get(closed.url("/api/x")).send().await.expect("request");
        assert_eq!(header(&resp, "retry-after").as_deref(), Some("1"));
        expect_error(resp, 503, "rate_limit_unavailable").await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited for the timeout"
        );
    }

    // Back (empty: nothing was saved), it is used again within a few retry intervals.
    let _redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(30);
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
    // Redis in use: a loaded machine may miss the 100 ms now and then (a 503), so this waits
    // for one answer in time instead of expecting the first.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get(gw.url("/api/x")).send().await.expect("req").status() != 200 {
        assert!(Instant::now() < deadline, "Redis never answered in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stopped: connections are accepted by the kernel, nothing is ever answered, so without
    // the timeout these requests would wait forever.
    redis.signal("-STOP");
    for _ in 0..5 {
        let started = Instant::now();
        let resp = c.get(gw.url("/api/x")).send().await.expect("request");
        expect_error(resp, 503, "rate_limit_unavailable").await;
        assert!(started.elapsed() < Duration::from_secs(10), "hang");
    }
    redis.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
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
