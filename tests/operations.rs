//! Operating the gateway: hot reload (admin API, SIGHUP, file watch) under load, the admin API,
//! Prometheus metrics, the access log, graceful shutdown.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, expect_error, Gateway, Upstream};

fn routes(a: std::net::SocketAddr, b: std::net::SocketAddr, with_b: bool) -> String {
    let mut cfg = format!(
        r#"
[upstreams.a]
targets = ["{a}"]

[upstreams.b]
targets = ["{b}"]

[routes.a]
prefix = "/a"
upstream = "a"
"#
    );
    if with_b {
        cfg.push_str("\n[routes.b]\nprefix = \"/b\"\nupstream = \"b\"\n");
    }
    cfg
}

async fn admin_get(gw: &Gateway, path: &str) -> reqwest::Response {
    client()
        .get(format!("http://{}{path}", gw.admin))
        .send()
        .await
        .expect("admin request")
}

async fn reload(gw: &Gateway) -> reqwest::Response {
    client()
        .post(format!("http://{}/reload", gw.admin))
        .send()
        .await
        .expect("reload request")
}

#[tokio::test]
async fn reload_applies_a_new_config_and_a_broken_one_changes_nothing() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let gw = Gateway::start(&routes(a.addr, b.addr, false)).await;
    let c = client();
    assert_eq!(c.get(gw.url("/b")).send().await.expect("req").status(), 404);

    gw.write_config(&routes(a.addr, b.addr, true));
    let resp = reload(&gw).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["generation"], 2);
    assert_eq!(c.get(gw.url("/b")).send().await.expect("req").status(), 200);

    // A broken config: rejected with file:line:col, the old one keeps serving.
    gw.write_config(&format!(
        "{}\n[routes.c]\nprefix = \"/c\"\nupstream = \"missing\"\n",
        routes(a.addr, b.addr, true)
    ));
    let resp = reload(&gw).await;
    assert_eq!(resp.status(), 422);
    let v: serde_json::Value = resp.json().await.expect("json");
    let details = v["error"]["details"].to_string();
    assert!(details.contains("gateway.toml:"), "{details}");
    assert!(
        details.contains("upstream `missing` is not defined"),
        "{details}"
    );
    assert_eq!(c.get(gw.url("/a")).send().await.expect("req").status(), 200);
    assert_eq!(c.get(gw.url("/b")).send().await.expect("req").status(), 200);
    let ready: serde_json::Value = admin_get(&gw, "/readyz").await.json().await.expect("json");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["generation"], 2);
    assert!(ready["last_reload_error"]
        .as_str()
        .unwrap_or_default()
        .contains("missing"));
    let metrics = admin_get(&gw, "/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains("tollgate_config_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_config_generation 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sighup_reloads_the_config() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let gw = Gateway::start(&routes(a.addr, b.addr, false)).await;
    gw.write_config(&routes(a.addr, b.addr, true));
    gw.signal("HUP");
    let c = client();
    for _ in 0..200 {
        if c.get(gw.url("/b")).send().await.expect("req").status() == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("SIGHUP did not reload:\n{}", gw.logs());
}

#[tokio::test]
async fn watched_config_file_reloads_on_change() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let gw = Gateway::start(&format!(
        "[server]\nwatch_config = true\n{}",
        routes(a.addr, b.addr, false)
    ))
    .await;
    // mtime granularity: make sure the change is visible as a change.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gw.write_config(&format!(
        "[server]\nwatch_config = true\n{}",
        routes(a.addr, b.addr, true)
    ));
    let c = client();
    for _ in 0..200 {
        if c.get(gw.url("/b")).send().await.expect("req").status() == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the file change did not reload:\n{}", gw.logs());
}

#[tokio::test]
async fn a_deleted_watched_config_keeps_the_running_one_until_it_is_back() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let gw = Gateway::start(&format!(
        "[server]\nwatch_config = true\n{}",
        routes(a.addr, b.addr, false)
    ))
    .await;
    // The watcher takes its baseline before the gateway reports ready (/healthz answers
    // earlier): a file deleted before that would be a file it never saw.
    let c = client();
    let ready = format!("http://{}/readyz", gw.admin);
    for _ in 0..600 {
        if c.get(&ready).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(gw.config_path()).expect("delete config");
    let mut warned = false;
    for _ in 0..600 {
        if gw.logs().contains("config file is gone") {
            warned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(warned, "no warning about the deleted file:\n{}", gw.logs());
    assert_eq!(
        c.get(gw.url("/a/x")).send().await.expect("req").status(),
        200
    );
    // An explicit reload has nothing to read: refused, and the old config still serves.
    assert!(!reload(&gw).await.status().is_success());
    assert_eq!(
        c.get(gw.url("/a/x")).send().await.expect("req").status(),
        200
    );

    // The file is back (with route b): the watcher picks it up.
    gw.write_config(&format!(
        "[server]\nwatch_config = true\n{}",
        routes(a.addr, b.addr, true)
    ));
    for _ in 0..200 {
        if c.get(gw.url("/b/y")).send().await.expect("req").status() == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the restored file did not reload:\n{}", gw.logs());
}

#[tokio::test]
async fn reloading_every_200ms_under_load_loses_no_request() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let gw = Arc::new(Gateway::start(&routes(a.addr, b.addr, true)).await);
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for w in 0..8 {
        let (gw, failures, done) = (gw.clone(), failures.clone(), done.clone());
        clients.spawn(async move {
            let c = client();
            for i in 0..625 {
                let path = if (i + w) % 2 == 0 { "/a/x" } else { "/b/y" };
                match c.get(gw.url(path)).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => {
                        eprintln!("{path}: {}", r.status());
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        eprintln!("{path}: {e}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let mut reloads = 0;
    while done.load(Ordering::SeqCst) < 5000 {
        reloads += 1;
        if reloads == 5 {
            // A broken config mid-load: refused, old routes keep serving.
            gw.write_config("[routes.broken]\nprefix = \"/\"\nupstream = \"nope\"\n");
            assert_eq!(reload(&gw).await.status(), 422);
        } else {
            // Alternate weights so each reload really builds a different snapshot.
            let mut cfg = routes(a.addr, b.addr, true);
            if reloads % 2 == 0 {
                cfg = cfg.replace("[upstreams.a]\n", "[upstreams.a]\nbalance = \"random\"\n");
            }
            gw.write_config(&cfg);
            assert_eq!(reload(&gw).await.status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if reloads > 600 {
            break;
        }
    }
    while clients.join_next().await.is_some() {}
    assert_eq!(done.load(Ordering::SeqCst), 5000);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed during reloads"
    );
    assert!(reloads >= 3, "only {reloads} reloads happened");
}

#[tokio::test]
async fn metrics_expose_every_family() {
    let up = Upstream::echo("a").await;
    let gw = Gateway::start(&format!(
        r#"
[upstreams.a]
targets = ["{}"]

[routes.a]
prefix = "/a"
upstream = "a"

[routes.a.plugins.ip-restriction]
deny = ["10.0.0.0/8"]
"#,
        up.addr
    ))
    .await;
    let c = client();
    assert_eq!(
        c.get(gw.url("/a/1")).send().await.expect("req").status(),
        200
    );
    assert_eq!(
        c.get(gw.url("/nothing"))
            .send()
            .await
            .expect("req")
            .status(),
        404
    );
    let resp = admin_get(&gw, "/metrics").await;
    assert!(resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain")));
    let text = resp.text().await.expect("text");
    for family in [
        "tollgate_requests_total",
        "tollgate_request_duration_seconds",
        "tollgate_upstream_attempt_duration_seconds",
        "tollgate_requests_in_flight",
        "tollgate_target_healthy",
        "tollgate_config_generation",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    // What the dashboard test (tests/compose.rs) checks panels against is what a live /metrics
    // shows: every family scraped here is in the gateway's list, with the same type.
    let listed = tollgate::telemetry::metrics::families();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                listed.iter().any(|(n, k)| n == name && *k == kind),
                "{name} ({kind}) is on /metrics but not in metrics::families(): {listed:?}"
            );
        }
    }
    assert!(
        text.contains("tollgate_requests_total{method=\"GET\",route=\"a\",status_class=\"2xx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "tollgate_requests_total{method=\"GET\",route=\"(none)\",status_class=\"4xx\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "tollgate_target_healthy{{target=\"{}\",upstream=\"a\"}} 1",
            up.addr
        )),
        "{text}"
    );
    // Every sample line is NAME{labels} VALUE with a numeric value.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(value.parse::<f64>().is_ok(), "bad sample line: {line}");
    }
    promtool_check(&text);
}

/// promtool (Debian package `prometheus`, installed by scripts/install-prereqs.sh) checks the
/// exposition format and Prometheus' naming rules.
fn promtool_check(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool not found: run scripts/install-prereqs.sh");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write");
    }
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn admin_explains_routes_and_shows_config_without_secrets() {
    let up = Upstream::echo("users").await;
    let gw = Gateway::start(&format!(
        r#"
[upstreams.users]
targets = ["{}"]

[routes.user]
template = "/api/users/{{id}}"
rewrite = "/users/{{id}}"
upstream = "users"

[routes.user.plugins.key-auth]
consumers = [{{ name = "ops", key_sha256 = "{}" }}]

[plugins.request-id]
"#,
        up.addr,
        "a".repeat(64)
    ))
    .await;
    let v: serde_json::Value = admin_get(&gw, "/routes/explain?method=GET&path=/api/users/%37")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["matched"], true, "{v}");
    assert_eq!(v["route"], "user");
    assert_eq!(v["upstream"], "users");
    assert_eq!(v["upstream_path"], "/users/7");
    assert_eq!(v["params"]["id"], "7");
    assert_eq!(
        v["plugins"],
        serde_json::json!([
            {"name": "request-id", "priority": 10000, "global": true},
            {"name": "key-auth", "priority": 8100, "global": false},
        ]),
        "{v}"
    );
    let v: serde_json::Value = admin_get(&gw, "/routes/explain?path=/nope")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["matched"], false);
    // The same shape when nothing matches: the global plugins a request would still meet.
    assert_eq!(
        v["plugins"],
        serde_json::json!([{"name": "request-id", "priority": 10000, "global": true}]),
        "{v}"
    );
    let resp = admin_get(&gw, "/routes/explain").await;
    assert_eq!(resp.status(), 400);

    let text = admin_get(&gw, "/config").await.text().await.expect("text");
    assert!(text.contains("<redacted>"), "{text}");
    assert!(!text.contains(&"a".repeat(64)), "a key hash leaked: {text}");
    assert!(text.contains("/api/users/{id}"), "{text}");
}

#[tokio::test]
async fn admin_token_guards_everything_but_health_probes() {
    let up = Upstream::echo("a").await;
    let gw = Gateway::start_opts(
        tempfile::tempdir().expect("dir"),
        &format!(
            "[upstreams.a]\ntargets = [\"{}\"]\n[routes.a]\nprefix = \"/\"\nupstream = \"a\"\n",
            up.addr
        ),
        "token_env = \"TG_TEST_ADMIN_TOKEN\"",
        &[("TG_TEST_ADMIN_TOKEN", "s3cret-token")],
    )
    .await;
    assert_eq!(admin_get(&gw, "/healthz").await.status(), 200);
    assert_eq!(admin_get(&gw, "/readyz").await.status(), 200);
    let resp = admin_get(&gw, "/upstreams").await;
    assert_eq!(resp.status(), 401);
    let resp = client()
        .get(format!("http://{}/upstreams", gw.admin))
        .header("authorization", "Bearer wrong")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 401);
    let resp = client()
        .get(format!("http://{}/upstreams", gw.admin))
        .header("authorization", "Bearer s3cret-token")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    let status = |value: &'static str| {
        let admin = gw.admin;
        async move {
            client()
                .get(format!("http://{admin}/upstreams"))
                .header("authorization", value)
                .send()
                .await
                .expect("req")
                .status()
                .as_u16()
        }
    };
    // Schemes are case-insensitive (RFC 9110 §11.1), and any run of blanks may follow them.
    assert_eq!(status("bearer s3cret-token").await, 200);
    assert_eq!(status("BEARER s3cret-token").await, 200);
    assert_eq!(status("Bearer \t s3cret-token").await, 200);
    // A wrong token of the same length, a prefix of the token, the token with more after it.
    assert_eq!(status("Bearer s3cret-tokem").await, 401);
    assert_eq!(status("Bearer s3cret").await, 401);
    assert_eq!(status("Bearer s3cret-token2").await, 401);
    assert_eq!(status("Basic s3cret-token").await, 401);
}

#[tokio::test]
async fn access_log_writes_one_json_line_per_request() {
    let up = Upstream::echo("a").await;
    let gw = Gateway::start(&format!(
        "[access_log]\npath = \"access.log\"\n[upstreams.a]\ntargets = [\"{}\"]\n[routes.a]\nprefix = \"/a\"\nupstream = \"a\"\n",
        up.addr
    ))
    .await;
    let c = client();
    c.get(gw.url("/a/x?q=1"))
        .header("x-request-id", "log-test-1")
        .send()
        .await
        .expect("req");
    let resp = c.get(gw.url("/missing")).send().await.expect("req");
    expect_error(resp, 404, "route_not_found").await;
    let file = gw.dir.path().join("access.log");
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("json line");
    assert_eq!(first["request_id"], "log-test-1");
    assert_eq!(first["route"], "a");
    assert_eq!(first["upstream"], "a");
    assert_eq!(first["status"], 200);
    assert_eq!(first["path"], "/a/x");
    assert_eq!(first["target"], up.addr.to_string());
    assert!(first["duration_ms"].as_f64().is_some());
    let second: serde_json::Value = serde_json::from_str(&lines[1]).expect("json line");
    assert_eq!(second["status"], 404);
    assert_eq!(second["error"], "route_not_found");
}

#[tokio::test]
async fn access_log_fields_keep_the_configured_order() {
    let up = Upstream::echo("a").await;
    let gw = Gateway::start(&format!(
        "[access_log]\npath = \"access.log\"\nfields = [\"status\", \"time\", \"route\"]\n\
         [upstreams.a]\ntargets = [\"{}\"]\n[routes.a]\nprefix = \"/a\"\nupstream = \"a\"\n",
        up.addr
    ))
    .await;
    let resp = client().get(gw.url("/a")).send().await.expect("req");
    assert_eq!(resp.status(), 200);
    let file = gw.dir.path().join("access.log");
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.ends_with('\n') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = text.lines().next().expect("one line");
    assert!(line.starts_with(r#"{"status":200,"time":""#), "{line}");
    assert!(line.ends_with(r#"","route":"a"}"#), "{line}");
}

#[tokio::test]
async fn metrics_of_configured_upstreams_and_routes_exist_at_zero_from_start() {
    let up = Upstream::echo("a").await;
    let gw = Gateway::start(&format!(
        "[upstreams.a]\ntargets = [\"{0}\"]\n[upstreams.b]\ntargets = [\"{0}\"]\n\
         [routes.a]\nprefix = \"/a\"\nupstream = \"a\"\n[routes.b]\nprefix = \"/b\"\nupstream = \"b\"\n",
        up.addr
    ))
    .await;
    let text = admin_get(&gw, "/metrics").await.text().await.expect("text");
    for series in [
        r#"tollgate_config_reloads_total{result="ok"} 0"#,
        r#"tollgate_config_reloads_total{result="failed"} 0"#,
        r#"tollgate_retries_total{upstream="a"} 0"#,
        r#"tollgate_retries_total{upstream="b"} 0"#,
        r#"tollgate_target_ejections_total{upstream="a"} 0"#,
        r#"tollgate_target_ejections_total{upstream="b"} 0"#,
        r#"tollgate_rate_limited_total{route="a"} 0"#,
        r#"tollgate_rate_limited_total{route="b"} 0"#,
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "{series} missing:\n{text}"
        );
    }
    promtool_check(&text);

    // A reload with a new upstream adds its series at 0 too, before any event.
    gw.write_config(&format!(
        "[upstreams.a]\ntargets = [\"{0}\"]\n[upstreams.c]\ntargets = [\"{0}\"]\n\
         [routes.a]\nprefix = \"/a\"\nupstream = \"c\"\n",
        up.addr
    ));
    assert_eq!(reload(&gw).await.status(), 200);
    let text = admin_get(&gw, "/metrics").await.text().await.expect("text");
    for series in [
        r#"tollgate_config_reloads_total{result="ok"} 1"#,
        r#"tollgate_config_reloads_total{result="failed"} 0"#,
        r#"tollgate_retries_total{upstream="c"} 0"#,
        r#"tollgate_target_ejections_total{upstream="c"} 0"#,
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "{series} missing:\n{text}"
        );
    }
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish() {
    // `/slow` requests are held until the test releases them: they are certainly in flight
    // when the gateway gets SIGTERM.
    let started = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (s, r) = (started.clone(), release.clone());
    let up = Upstream::start(move |req| {
        let (s, r) = (s.clone(), r.clone());
        async move {
            if req.uri().path() == "/slow" {
                s.fetch_add(1, Ordering::SeqCst);
                r.acquire().await.expect("semaphore").forget();
            }
            common::describe("slow", req).await
        }
    })
    .await;
    let mut gw = Gateway::start(&format!(
        "[server]\ngraceful_shutdown_timeout = \"10s\"\n[upstreams.a]\ntargets = [\"{}\"]\n[routes.a]\nprefix = \"/\"\nupstream = \"a\"\n",
        up.addr
    ))
    .await;
    // A keep-alive connection that has been through a request and sits idle.
    let mut idle = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut idle, b"GET /idle HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let (status, _) = common::read_raw_response(&mut idle)
        .await
        .expect("a response");
    assert_eq!(status, 200);
    let mut inflight = Vec::new();
    for _ in 0..5 {
        let url = gw.url("/slow");
        inflight.push(tokio::spawn(async move {
            client().get(url).send().await.map(|r| r.status().as_u16())
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while started.load(Ordering::SeqCst) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "slow requests did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.signal("TERM");
    // The idle connection is closed by the shutdown (its client sees the end of the stream).
    assert!(common::read_raw_response(&mut idle).await.is_none());
    // Shutting down, with five requests in flight: they finish.
    release.add_permits(5);
    for h in inflight {
        assert_eq!(h.await.expect("join").expect("request"), 200);
    }
    assert!(
        gw.wait_exit(Duration::from_secs(30)),
        "tollgate did not exit after SIGTERM"
    );
}

/// Kills the upgraded process when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrade_hands_over_the_sockets_and_drains_the_old_process() {
    // `/slow` requests are held until the test releases them, after the hand-over began.
    let started = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (s, r) = (started.clone(), release.clone());
    let up = Upstream::start(move |req| {
        let (s, r) = (s.clone(), r.clone());
        async move {
            if req.uri().path() == "/slow" {
                s.fetch_add(1, Ordering::SeqCst);
                r.acquire().await.expect("semaphore").forget();
            }
            common::describe("svc", req).await
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("upgrade.sock");
    let mut old = Gateway::start_in(
        dir,
        &format!(
            "[server]\nupgrade_sock = \"{}\"\ngraceful_shutdown_timeout = \"20s\"\n\
             [upstreams.a]\ntargets = [\"{}\"]\n[routes.a]\nprefix = \"/\"\nupstream = \"a\"\n",
            sock.display(),
            up.addr
        ),
    )
    .await;

    // Requests in flight on the old process when it is told to hand over.
    let mut inflight = Vec::new();
    for _ in 0..5 {
        let url = old.url("/slow");
        inflight.push(tokio::spawn(async move {
            client().get(url).send().await.map(|r| r.status().as_u16())
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while started.load(Ordering::SeqCst) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "slow requests did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A client opening a new connection for every request, all through the hand-over.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = old.url("/fast");
    let s = stop.clone();
    let load = tokio::spawn(async move {
        let fresh = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let (mut ok, mut failed) = (0usize, Vec::new());
        while !s.load(Ordering::SeqCst) {
            match fresh.get(&url).send().await {
                Ok(r) if r.status() == 200 => ok += 1,
                Ok(r) => failed.push(format!("status {}", r.status())),
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed)
    });

    // The new binary waits on the upgrade socket for the old one's listeners.
    let new_log = std::fs::File::create(old.config_path().with_file_name("new.log")).expect("log");
    let new = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("-c")
        .arg(old.config_path())
        .arg("--upgrade")
        .stdout(std::process::Stdio::null())
        .stderr(new_log)
        .spawn()
        .expect("spawn new tollgate");
    let mut new = Reaped(new);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            new.0.try_wait().expect("try_wait").is_none(),
            "the new process exited early"
        );
        assert!(std::time::Instant::now() < deadline, "no upgrade socket");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    old.signal("QUIT");

    // The old process finishes what it had, then exits.
    release.add_permits(5);
    for h in inflight {
        assert_eq!(h.await.expect("join").expect("in-flight request"), 200);
    }
    assert!(
        old.wait_exit(Duration::from_secs(30)),
        "the old process did not exit after draining:\n{}",
        old.logs()
    );
    // Only the new process is left, serving on the same sockets (proxy and admin).
    let resp = client()
        .get(old.url("/after"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.await.expect("load");
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "{} failed of {}: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(
        new.0.try_wait().expect("try_wait").is_none(),
        "the new process exited"
    );

    // The new process took over the upgrade socket's lock from the old one (it writes its pid
    // there once it holds it), so a third instance on the same socket is refused.
    let lock = sock.with_file_name("upgrade.sock.lock");
    let new_pid = new.0.id().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != new_pid {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was not taken over"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let third = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("-c")
        .arg(old.config_path())
        .output()
        .expect("run a third tollgate");
    let text = String::from_utf8_lossy(&third.stderr);
    assert_eq!(third.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("(pid {new_pid}")), "{text}");
}

/// A listening address another process holds is a start-up error naming the listener, not a
/// gateway that looks healthy (admin up) while its clients reach the other process.
#[test]
fn a_taken_listener_address_fails_start_up_at_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nupgrade_sock = \"{}\"\n\n[admin]\nenabled = false\n\n\
             [[listeners]]\nname = \"public\"\naddress = \"{addr}\"\n\n\
             [upstreams.u]\ntargets = [\"127.0.0.1:9\"]\n\n[routes.r]\nprefix = \"/\"\nupstream = \"u\"\n",
            dir.path().join("upgrade.sock").display()
        ),
    )
    .expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("-c")
        .arg(&path)
        .arg("run")
        .output()
        .expect("run tollgate");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("listener `public`"), "{text}");
    assert!(text.contains("already in use"), "{text}");
    drop(taken);
}
