//! Health-aware load balancing through the real gateway: algorithms, passive and active health,
//! retries, retry budget and circuit breaking.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, closed_addr, expect_error, Gateway, Upstream};

fn upstream_cfg(targets: &str, extra: &str) -> String {
    format!(
        r#"
[upstreams.svc]
targets = [{targets}]
{extra}

[routes.all]
prefix = "/"
upstream = "svc"
"#
    )
}

async fn admin_view(gw: &Gateway) -> serde_json::Value {
    client()
        .get(format!("http://{}/upstreams", gw.admin))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json")
}

/// The admin view of the target at `addr`.
async fn target_view(gw: &Gateway, addr: std::net::SocketAddr) -> serde_json::Value {
    let v = admin_view(gw).await;
    v["upstreams"][0]["targets"]
        .as_array()
        .and_then(|ts| {
            ts.iter()
                .find(|t| t["address"] == addr.to_string())
                .cloned()
        })
        .unwrap_or(serde_json::Value::Null)
}

/// Polls `cond` every 50 ms for up to 20 s (a hang catcher, not a timing assertion).
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn spread(algorithm: &str) {
    let ups = [
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
    ];
    let targets = format!(
        "{{ address = \"{}\", weight = 1 }}, {{ address = \"{}\", weight = 2 }}, {{ address = \"{}\", weight = 3 }}",
        ups[0].addr, ups[1].addr, ups[2].addr
    );
    let gw = Gateway::start(&upstream_cfg(
        &targets,
        &if algorithm == "ring_hash" {
            format!("balance = \"{algorithm}\"\nhash_on = \"header:x-user\"")
        } else {
            format!("balance = \"{algorithm}\"")
        },
    ))
    .await;
    let c = client();
    for i in 0..3000 {
        let resp = c
            .get(gw.url("/w"))
            .header("x-user", format!("user-{i}"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        resp.bytes().await.expect("body");
    }
    for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
        let got = ups[i].requests() as f64 / 3000.0;
        assert!(
            (got - want).abs() <= 0.05,
            "{algorithm}: target {i} got {got:.3}, want {want:.3} ± 0.05"
        );
    }
}

#[tokio::test]
async fn round_robin_respects_weights() {
    spread("round_robin").await;
}

#[tokio::test]
async fn random_respects_weights() {
    spread("random").await;
}

#[tokio::test]
async fn ring_hash_respects_weights() {
    spread("ring_hash").await;
}

#[tokio::test]
async fn least_request_sends_each_request_to_the_target_with_fewer_in_flight() {
    // Both targets hold every request until the test releases them, so the gateway's count of
    // requests in flight to each is exactly what it has received: every pick is then decided by
    // the counts (equal counts, either target), not by how fast anything ran.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let held = |name: &'static str| {
        let release = release.clone();
        Upstream::start(move |req| {
            let release = release.clone();
            async move {
                release.acquire().await.expect("semaphore").forget();
                common::describe(name, req).await
            }
        })
    };
    let (a, b) = (held("a").await, held("b").await);
    let gw = Gateway::start(&upstream_cfg(
        &format!("\"{}\", \"{}\"", a.addr, b.addr),
        "balance = \"least_request\"",
    ))
    .await;
    let c = client();
    let mut set = tokio::task::JoinSet::new();
    for sent in 1..=20 {
        let (c, url) = (c.clone(), gw.url("/lr"));
        set.spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) });
        eventually("the request reaches a target", || async {
            a.requests() + b.requests() == sent
        })
        .await;
        assert!(
            a.requests().abs_diff(b.requests()) <= 1,
            "after {sent}: a holds {}, b holds {}",
            a.requests(),
            b.requests()
        );
    }
    release.add_permits(20);
    while let Some(r) = set.join_next().await {
        assert_eq!(r.expect("join").expect("request"), 200);
    }
}

#[tokio::test]
async fn ring_hash_is_sticky_and_remaps_only_a_removed_targets_keys() {
    let ups = [
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
    ];
    let all = format!(
        "\"{}\", \"{}\", \"{}\"",
        ups[0].addr, ups[1].addr, ups[2].addr
    );
    let two = format!("\"{}\", \"{}\"", ups[0].addr, ups[1].addr);
    let extra = "balance = \"ring_hash\"\nhash_on = \"cookie:session\"";
    let c = client();
    let owners = |gw: &Gateway| {
        let (c, base) = (c.clone(), gw.url("/s"));
        async move {
            let mut out = Vec::new();
            for k in 0..200 {
                let v: serde_json::Value = c
                    .get(&base)
                    .header("cookie", format!("theme=dark; session=s{k}"))
                    .send()
                    .await
                    .expect("request")
                    .json()
                    .await
                    .expect("json");
                out.push(v["upstream"].as_str().unwrap_or_default().to_string());
            }
            out
        }
    };
    let gw = Gateway::start(&upstream_cfg(&all, extra)).await;
    let first = owners(&gw).await;
    assert_eq!(
        first,
        owners(&gw).await,
        "the same session always reaches the same target"
    );
    drop(gw);
    let gw = Gateway::start(&upstream_cfg(&two, extra)).await;
    let second = owners(&gw).await;
    for (before, after) in first.iter().zip(&second) {
        if before != "c" {
            assert_eq!(before, after, "a session of a remaining target moved");
        }
    }
    let moved = first.iter().filter(|o| *o == "c").count();
    assert!(
        moved > 20 && moved < 120,
        "target c owned {moved} of 200 sessions"
    );
}

#[tokio::test]
#[allow(clippy::async_yields_async)] // spawn_flappy hands back the accept loop's JoinHandle
async fn killed_target_costs_clients_nothing_and_is_ejected_then_readmitted() {
    let stable = Upstream::echo("stable").await;
    // A target we can stop and start again on the same port.
    let flappy_addr = common::closed_addr();
    let up = Arc::new(AtomicBool::new(true));
    let served = Arc::new(AtomicUsize::new(0));
    // Connections of the current incarnation, aborted when it is killed: a dead process takes
    // its pooled keep-alive connections with it.
    let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
    let spawn_flappy = |up: Arc<AtomicBool>, served: Arc<AtomicUsize>| {
        let conns = conns.clone();
        async move {
            let listener = tokio::net::TcpListener::bind(flappy_addr)
                .await
                .expect("bind flappy");
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        break;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(stream);
                        break;
                    }
                    let served = served.clone();
                    let h = tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            served.fetch_add(1, Ordering::SeqCst);
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    common::describe("flappy", req).await,
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                    conns.lock().expect("lock").push(h.abort_handle());
                }
            })
        }
    };
    let task = spawn_flappy(up.clone(), served.clone()).await;
    let gw = Gateway::start(&upstream_cfg(
        &format!("\"{}\", \"{flappy_addr}\"", stable.addr),
        "outlier_detection = { consecutive_failures = 2, base_ejection_time = \"1s\" }",
    ))
    .await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/x")).send().await.expect("req").status(), 200);
    }
    assert!(served.load(Ordering::SeqCst) > 0);
    // Kill it: the listener goes away, connections are refused.
    up.store(false, Ordering::SeqCst);
    let _ = tokio::net::TcpStream::connect(flappy_addr).await;
    let _ = task.await;
    for h in conns.lock().expect("lock").drain(..) {
        h.abort();
    }
    for i in 0..40 {
        let resp = c
            .get(gw.url(&format!("/x?i={i}")))
            .send()
            .await
            .expect("req");
        assert_eq!(
            resp.status(),
            200,
            "request {i} failed while a target was down"
        );
    }
    let t = target_view(&gw, flappy_addr).await;
    assert!(t["total_failures"].as_u64().unwrap_or(0) >= 1, "{t}");
    assert!(t["times_ejected"].as_u64().unwrap_or(0) >= 1, "{t}");
    // Bring it back: after the ejection ends it gets traffic again.
    up.store(true, Ordering::SeqCst);
    let before = served.load(Ordering::SeqCst);
    let _task = spawn_flappy(up.clone(), served.clone()).await;
    eventually("the returned target serves again", || {
        let c = c.clone();
        let url = gw.url("/back");
        let served = served.clone();
        async move {
            let _ = c.get(url).send().await;
            served.load(Ordering::SeqCst) > before
        }
    })
    .await;
}

#[tokio::test]
async fn active_http_checks_flip_state_at_thresholds() {
    let status = Arc::new(AtomicU16::new(200));
    let s = status.clone();
    let up = Upstream::start(move |req| {
        let s = s.clone();
        async move {
            if req.uri().path() == "/healthz" {
                let code = s.load(Ordering::SeqCst);
                return common::json_response(code, &serde_json::json!({}));
            }
            common::describe("checked", req).await
        }
    })
    .await;
    let gw = Gateway::start(&upstream_cfg(
        &format!("\"{}\"", up.addr),
        r#"panic_mode = false
[upstreams.svc.health_check]
type = "http"
path = "/healthz"
interval = "100ms"
timeout = "2s"
healthy_threshold = 2
unhealthy_threshold = 2
"#,
    ))
    .await;
    let c = client();
    // Checked before the first request: healthy from the start.
    assert_eq!(c.get(gw.url("/a")).send().await.expect("req").status(), 200);
    status.store(503, Ordering::SeqCst);
    eventually("the target is marked unhealthy", || async {
        target_view(&gw, up.addr).await["healthy"] == false
    })
    .await;
    let resp = c.get(gw.url("/a")).send().await.expect("req");
    expect_error(resp, 503, "no_healthy_target").await;
    status.store(200, Ordering::SeqCst);
    eventually("the target is healthy again", || async {
        target_view(&gw, up.addr).await["healthy"] == true
    })
    .await;
    assert_eq!(c.get(gw.url("/a")).send().await.expect("req").status(), 200);
}

#[tokio::test]
async fn active_tcp_check_marks_a_closed_port_unhealthy_and_panic_mode_still_serves() {
    let up = Upstream::echo("only").await;
    let dead = closed_addr();
    let gw = Gateway::start(&upstream_cfg(
        &format!("\"{}\", \"{dead}\"", up.addr),
        "[upstreams.svc.health_check]\ntype = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"2s\"\n",
    ))
    .await;
    let v = target_view(&gw, dead).await;
    assert_eq!(v["healthy"], false, "{v}");
    let v = target_view(&gw, up.addr).await;
    assert_eq!(v["healthy"], true, "{v}");
    let c = client();
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/t")).send().await.expect("req").status(), 200);
    }
    assert_eq!(up.requests(), 10);
}

#[tokio::test]
async fn panic_mode_spreads_load_when_every_target_fails_checks() {
    let up = Upstream::start(|req| async move {
        if req.uri().path() == "/healthz" {
            return common::json_response(500, &serde_json::json!({}));
        }
        common::describe("sick", req).await
    })
    .await;
    let cfg = |panic: bool| {
        upstream_cfg(
            &format!("\"{}\"", up.addr),
            &format!(
                "panic_mode = {panic}\n[upstreams.svc.health_check]\npath = \"/healthz\"\ninterval = \"1s\"\n"
            ),
        )
    };
    let gw = Gateway::start(&cfg(true)).await;
    assert_eq!(
        client()
            .get(gw.url("/p"))
            .send()
            .await
            .expect("req")
            .status(),
        200
    );
    drop(gw);
    let gw = Gateway::start(&cfg(false)).await;
    let resp = client().get(gw.url("/p")).send().await.expect("req");
    expect_error(resp, 503, "no_healthy_target").await;
}

#[tokio::test]
async fn retryable_status_goes_to_another_target() {
    let bad = Upstream::start(|_req| async {
        common::json_response(503, &serde_json::json!({"bad": true}))
    })
    .await;
    let good = Upstream::echo("good").await;
    let gw = Gateway::start(&upstream_cfg(
        &format!("\"{}\", \"{}\"", bad.addr, good.addr),
        "outlier_detection = { enabled = false }\n[upstreams.svc.retry]\nstatuses = [503]\nbackoff_base = \"1ms\"\n",
    ))
    .await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/r")).send().await.expect("req").status(), 200);
    }
    assert!(
        bad.requests() >= 4,
        "round robin sent some first tries to the bad target"
    );
    // Non-idempotent requests are not retried unless the route opts in.
    let mut saw_503 = false;
    for _ in 0..6 {
        let s = c
            .post(gw.url("/r"))
            .body("x")
            .send()
            .await
            .expect("req")
            .status();
        saw_503 |= s == 503;
    }
    assert!(saw_503, "a POST reached the bad target and was not retried");
}

/// A refused connect never reached the upstream: it goes to another target even with no retry
/// budget at all, under concurrency, however often the dead target is picked (no outlier
/// detection here to take it out of rotation).
#[tokio::test]
async fn refused_connects_are_retried_elsewhere_whatever_the_budget() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let dead = closed_addr();
    let gw = Gateway::start(&upstream_cfg(
        &format!("\"{}\", \"{}\", \"{dead}\"", a.addr, b.addr),
        "outlier_detection = { enabled = false }\n\
         retry = { attempts = 2, budget_ratio = 0.0, budget_min_retries = 0 }",
    ))
    .await;
    let c = client();
    let mut set = tokio::task::JoinSet::new();
    for client_no in 0..16 {
        let (c, url) = (c.clone(), gw.url(&format!("/c{client_no}")));
        set.spawn(async move {
            let mut failed = Vec::new();
            for _ in 0..30 {
                let status = c.get(&url).send().await.map(|r| r.status().as_u16());
                if status.as_ref().map_or(true, |s| *s != 200) {
                    failed.push(status.map_err(|e| e.to_string()));
                }
            }
            failed
        });
    }
    let mut failed = Vec::new();
    while let Some(r) = set.join_next().await {
        failed.extend(r.expect("join"));
    }
    assert!(failed.is_empty(), "client-visible failures: {failed:?}");
    assert_eq!(a.requests() + b.requests(), 16 * 30);
    // The dead target was picked (round robin: a third of first tries) and every one retried.
    let t = target_view(&gw, dead).await;
    assert!(t["total_failures"].as_u64().unwrap_or(0) >= 100, "{t}");
}

#[tokio::test]
async fn retry_budget_stops_retry_storms() {
    // Every target fails with a retryable status; a generous attempt count would multiply the
    // load by 6 without a budget.
    let hits = Arc::new(AtomicUsize::new(0));
    let mut ups = Vec::new();
    for _ in 0..6 {
        let h = hits.clone();
        ups.push(
            Upstream::start(move |_req| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    common::json_response(503, &serde_json::json!({}))
                }
            })
            .await,
        );
    }
    let targets: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    let retry = |ratio: &str, min: u32| {
        format!(
            "outlier_detection = {{ enabled = false }}\n[upstreams.svc.retry]\nattempts = 5\nstatuses = [503]\nbackoff_base = \"50ms\"\nbackoff_max = \"50ms\"\nbudget_ratio = {ratio}\nbudget_min_retries = {min}\n"
        )
    };
    let gw = Gateway::start(&upstream_cfg(&targets.join(", "), &retry("0.0", 0))).await;
    let c = client();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (c, url) = (c.clone(), gw.url("/storm"));
        set.spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.expect("join").expect("req"), 503);
    }
    // No budget at all: exactly one try per request.
    assert_eq!(hits.load(Ordering::SeqCst), 20);
    drop(gw);
    hits.store(0, Ordering::SeqCst);
    let gw = Gateway::start(&upstream_cfg(&targets.join(", "), &retry("1.0", 0))).await;
    for _ in 0..5 {
        let s = c.get(gw.url("/storm")).send().await.expect("req").status();
        assert_eq!(s, 503);
    }
    // A full budget lets each of the 5 requests use all 6 targets.
    assert_eq!(hits.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn circuit_breaker_answers_503_over_max_in_flight() {
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let up = Upstream::start(move |req| {
        let r = r.clone();
        async move {
            r.notified().await;
            common::describe("held", req).await
        }
    })
    .await;
    let gw = Gateway::start(&upstream_cfg(
        &format!("\"{}\"", up.addr),
        "[upstreams.svc.circuit_breaker]\nmax_in_flight = 2\n",
    ))
    .await;
    let c = client();
    let mut held = Vec::new();
    for _ in 0..2 {
        let (c, url) = (c.clone(), gw.url("/held"));
        held.push(tokio::spawn(async move {
            c.get(url).send().await.map(|r| r.status())
        }));
    }
    eventually("two requests are held upstream", || async {
        up.requests() == 2
    })
    .await;
    let resp = c.get(gw.url("/held")).send().await.expect("req");
    let err = expect_error(resp, 503, "upstream_overloaded").await;
    assert!(err["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("svc"));
    // Letting them finish frees the slots.
    for _ in 0..2 {
        release.notify_one();
    }
    for h in held {
        assert_eq!(h.await.expect("join").expect("req"), 200);
    }
    let r2 = release.clone();
    let (c2, url) = (c.clone(), gw.url("/held"));
    let third = tokio::spawn(async move { c2.get(url).send().await.map(|r| r.status()) });
    eventually("the next request reaches the upstream", || async {
        up.requests() == 3
    })
    .await;
    r2.notify_one();
    assert_eq!(third.await.expect("join").expect("req"), 200);
}

#[tokio::test]
async fn active_grpc_checks_follow_the_health_service() {
    use tonic_health::ServingStatus;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.v1.Orders", ServingStatus::Serving)
        .await;
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
    });
    let gw = Gateway::start(&upstream_cfg(
        &format!("\"{addr}\""),
        r#"protocol = "h2c"
[upstreams.svc.health_check]
type = "grpc"
service = "shop.v1.Orders"
interval = "100ms"
timeout = "2s"
healthy_threshold = 1
unhealthy_threshold = 2
"#,
    ))
    .await;
    assert_eq!(target_view(&gw, addr).await["healthy"], true);
    reporter
        .set_service_status("shop.v1.Orders", ServingStatus::NotServing)
        .await;
    eventually("NOT_SERVING marks the target unhealthy", || async {
        let t = target_view(&gw, addr).await;
        t["healthy"] == false
            && t["last_problem"]
                .as_str()
                .is_some_and(|p| p.contains("NOT_SERVING"))
    })
    .await;
    reporter
        .set_service_status("shop.v1.Orders", ServingStatus::Serving)
        .await;
    eventually("SERVING makes it healthy again", || async {
        target_view(&gw, addr).await["healthy"] == true
    })
    .await;
}

#[tokio::test]
async fn per_try_timeout_moves_a_slow_attempt_to_another_target() {
    let slow = Upstream::start(|req| async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        common::describe("slow", req).await
    })
    .await;
    let fast = Upstream::echo("fast").await;
    let gw = Gateway::start(&upstream_cfg(
        &format!("\"{}\", \"{}\"", slow.addr, fast.addr),
        // Long enough for any answer of the fast target on a loaded machine.
        "[upstreams.svc.retry]\non = [\"timeout\"]\nper_try_timeout = \"3s\"\nbackoff_base = \"1ms\"\n",
    ))
    .await;
    let c = client();
    // Round robin over two targets: at least one of two first tries goes to the slow one.
    for _ in 0..2 {
        let v: serde_json::Value = c
            .get(gw.url("/t"))
            .send()
            .await
            .expect("req")
            .json()
            .await
            .expect("json");
        assert_eq!(v["upstream"], "fast");
    }
    assert!(
        slow.requests() >= 1,
        "some first tries went to the slow target"
    );
}
