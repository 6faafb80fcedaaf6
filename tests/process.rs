//! Process-wide settings: what a reload applies to the running process (`watch_config`, the log
//! level) and what it cannot (`pending_restart`), and one process per admin address and upgrade
//! socket.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{client, free_port, Gateway, Upstream};

fn routes(a: std::net::SocketAddr, with_b: bool) -> String {
    let mut cfg = format!(
        "[upstreams.a]\ntargets = [\"{a}\"]\n\n[routes.a]\nprefix = \"/a\"\nupstream = \"a\"\n"
    );
    if with_b {
        cfg.push_str("\n[routes.b]\nprefix = \"/b\"\nupstream = \"a\"\n");
    }
    cfg
}

async fn admin_json(gw: &Gateway, path: &str) -> serde_json::Value {
    client()
        .get(format!("http://{}{path}", gw.admin))
        .send()
        .await
        .expect("admin request")
        .json()
        .await
        .expect("json")
}

async fn reload(gw: &Gateway) -> serde_json::Value {
    let resp = client()
        .post(format!("http://{}/reload", gw.admin))
        .send()
        .await
        .expect("reload request");
    assert_eq!(resp.status(), 200, "reload refused:\n{}", gw.logs());
    resp.json().await.expect("json")
}

async fn status(gw: &Gateway, path: &str) -> u16 {
    client()
        .get(gw.url(path))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Replaces the whole config file (header included) with `edit` applied to its current text.
fn edit_config(gw: &Gateway, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(gw.config_path()).expect("read config");
    let tmp = gw.config_path().with_extension("toml.tmp");
    std::fs::write(&tmp, edit(text)).expect("write config");
    std::fs::rename(&tmp, gw.config_path()).expect("replace config");
}

#[tokio::test]
async fn restart_only_changes_are_listed_until_reverted_and_the_rest_applies() {
    let a = Upstream::echo("a").await;
    let body = |with_b| format!("[server]\nthreads = 2\n{}", routes(a.addr, with_b));
    let gw = Gateway::start(&body(false)).await;
    let listener = format!("address = \"{}\"", gw.addr);

    // Threads and the listener's address change with a new route: the route applies, the
    // others wait for a restart and the sockets stay as they are.
    gw.write_config(&body(true));
    edit_config(&gw, |text| {
        text.replace("threads = 2", "threads = 3")
            .replace(&listener, "address = \"127.0.0.1:1\"")
    });
    let answer = reload(&gw).await;
    let pending = serde_json::json!(["server.threads", "listeners.test.address"]);
    assert_eq!(answer["pending_restart"], pending, "{answer}");
    assert_eq!(admin_json(&gw, "/readyz").await["pending_restart"], pending);
    assert_eq!(status(&gw, "/b").await, 200);
    let warned = |gw: &Gateway| gw.logs().matches("config change not applied").count();
    assert_eq!(warned(&gw), 2, "{}", gw.logs());
    assert!(gw.logs().contains("server.threads"), "{}", gw.logs());

    // Reloading the same file again: still pending, not warned again.
    let answer = reload(&gw).await;
    assert_eq!(answer["pending_restart"], pending, "{answer}");
    assert_eq!(warned(&gw), 2, "{}", gw.logs());

    // Reverted: nothing is pending any more.
    gw.write_config(&body(true));
    let answer = reload(&gw).await;
    assert_eq!(answer["pending_restart"], serde_json::json!([]), "{answer}");
    assert_eq!(
        admin_json(&gw, "/readyz").await["pending_restart"],
        serde_json::json!([])
    );
}

/// Polls (generously) until `cond` holds; the gateway's logs if it never does.
async fn eventually(gw: &Gateway, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen:\n{}", gw.logs());
}

#[tokio::test]
async fn watch_config_turned_on_and_off_by_reload_starts_and_stops_the_watcher() {
    let a = Upstream::echo("a").await;
    let gw = Gateway::start(&routes(a.addr, false)).await;
    let watching = |on: bool| format!("[server]\nwatch_config = {on}\n");

    // Turned on by an explicit reload.
    gw.write_config(&format!("{}{}", watching(true), routes(a.addr, true)));
    assert!(reload(&gw).await["pending_restart"]
        .as_array()
        .is_some_and(Vec::is_empty));
    assert_eq!(status(&gw, "/b").await, 200);
    assert!(gw.logs().contains("watching the config file for changes"));

    // The watcher now reloads on its own (the pause makes the new mtime differ).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gw.write_config(&format!("{}{}", watching(true), routes(a.addr, false)));
    eventually(&gw, "a reload by the watcher", async || {
        status(&gw, "/b").await == 404
    })
    .await;

    // Turned off by a change the watcher itself reloads.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gw.write_config(&format!("{}{}", watching(false), routes(a.addr, true)));
    eventually(&gw, "the watcher stopping", async || {
        gw.logs().contains("no longer watching the config file")
    })
    .await;
    assert_eq!(status(&gw, "/b").await, 200);
    let generation = admin_json(&gw, "/healthz").await["generation"].clone();

    // Nothing watches any more: a change stays unread (the watcher polled every second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gw.write_config(&format!("{}{}", watching(false), routes(a.addr, false)));
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(status(&gw, "/b").await, 200, "{}", gw.logs());
    assert_eq!(admin_json(&gw, "/healthz").await["generation"], generation);
}

#[tokio::test]
async fn log_level_changes_apply_on_reload() {
    let a = Upstream::echo("a").await;
    let gw = Gateway::start(&routes(a.addr, false)).await;
    // Written at info level at the end of every successful reload.
    let infos = |gw: &Gateway| gw.logs().matches("config reloaded").count();

    edit_config(&gw, |text| {
        text.replace("level = \"debug\"", "level = \"warn\"")
    });
    reload(&gw).await;
    let quiet = infos(&gw);
    reload(&gw).await;
    assert_eq!(
        infos(&gw),
        quiet,
        "info lines at level warn:\n{}",
        gw.logs()
    );

    edit_config(&gw, |text| {
        text.replace("level = \"warn\"", "level = \"info\"")
    });
    reload(&gw).await;
    assert_eq!(infos(&gw), quiet + 1, "{}", gw.logs());
}

/// Runs tollgate (`run`) on `config` written into `dir`, expecting it to refuse to start.
fn run_expecting_failure(dir: &Path, config: &str) -> Output {
    let path = dir.join("second.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("-c")
        .arg(&path)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tollgate");
    // A start that wrongly succeeds must not hang the test.
    for _ in 0..600 {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "the second instance started:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn second_config(listener: u16, admin: String, upgrade_sock: &Path) -> String {
    format!(
        "[server]\nupgrade_sock = \"{}\"\n\n[[listeners]]\nname = \"second\"\n\
         address = \"127.0.0.1:{listener}\"\n\n[admin]\naddress = \"{admin}\"\n\n\
         [upstreams.u]\ntargets = [\"127.0.0.1:9\"]\n\n[routes.r]\nprefix = \"/\"\nupstream = \"u\"\n",
        upgrade_sock.display()
    )
}

#[tokio::test]
async fn a_second_instance_on_the_same_admin_address_fails_start_up() {
    let a = Upstream::echo("a").await;
    let first = Gateway::start(&routes(a.addr, false)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The second one's listener port was free a moment ago; if something took it since, the
    // refusal is about the listener, and the test tries another.
    for _ in 0..5 {
        let config = second_config(
            free_port(),
            first.admin.to_string(),
            &dir.path().join("upgrade.sock"),
        );
        let out = run_expecting_failure(dir.path(), &config);
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}");
        if text.contains("listener `second`") {
            continue;
        }
        assert!(
            text.contains(&format!(
                "the admin listener (`[admin] address`): {} is already in use",
                first.admin
            )),
            "{text}"
        );
        assert!(text.contains("`[server] upgrade_sock`"), "{text}");
        assert_eq!(status(&first, "/a").await, 200);
        return;
    }
    panic!("no free port for the second instance's listener");
}

#[tokio::test]
async fn a_second_instance_on_the_same_upgrade_socket_fails_start_up() {
    let a = Upstream::echo("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("shared.sock");
    let first = Gateway::start(&format!(
        "[server]\nupgrade_sock = \"{}\"\n{}",
        sock.display(),
        routes(a.addr, false)
    ))
    .await;
    // Its own listener and admin ports: only the upgrade socket is shared.
    let config = second_config(free_port(), format!("127.0.0.1:{}", free_port()), &sock);
    let out = run_expecting_failure(dir.path(), &config);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "upgrade socket {} is in use by a running tollgate (pid {}",
            sock.display(),
            first.pid()
        )),
        "{text}"
    );
    assert!(text.contains("`[admin] address`"), "{text}");
    assert_eq!(status(&first, "/a").await, 200);
}
