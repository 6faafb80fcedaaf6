//! Hot reload: build the complete next snapshot off the request path (parse, validate, compile
//! routes, instantiate plugins, discover and health-check targets), then swap it in atomically.
//! Requests in flight finish on the snapshot they started with; a broken config changes nothing
//! but the error report.
//!
//! Triggers: `POST /reload` on the admin listener, SIGHUP, and (with `server.watch_config`) a
//! change of the file's modification time.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tollgate_plugin_api::PluginRegistry;

use crate::config::{self, AdminSettings, GatewayConfig, Listener};
use crate::snapshot::Snapshot;
use crate::telemetry::{access_log, metrics::metrics};

/// What the last reload attempt left behind, for `/readyz` and the reload answer.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// Generation of the live config.
    pub generation: u64,
    /// Error of the last failed reload, cleared by a successful one.
    pub last_error: Option<String>,
    /// Settings that changed in the file but need a restart or upgrade to apply.
    pub pending_restart: Vec<String>,
}

/// Owns reloading for the process.
pub struct Reloader {
    path: PathBuf,
    registry: PluginRegistry,
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// The listeners and admin the process bound at start (they cannot change in place).
    bound_listeners: Vec<Listener>,
    bound_admin: Option<AdminSettings>,
    /// One reload at a time; a trigger during a reload waits for it.
    serial: tokio::sync::Mutex<()>,
    status: Mutex<ReloadStatus>,
    ready: AtomicBool,
}

impl Reloader {
    /// A reloader for the config at `path`, currently live in `snapshot`.
    pub fn new(path: PathBuf, registry: PluginRegistry, snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        let (bound_listeners, bound_admin, generation) = {
            let s = snapshot.load();
            (
                s.config.listeners.clone(),
                s.config.admin.clone(),
                s.generation,
            )
        };
        Self {
            path,
            registry,
            snapshot,
            bound_listeners,
            bound_admin,
            serial: tokio::sync::Mutex::new(()),
            status: Mutex::new(ReloadStatus {
                generation,
                ..ReloadStatus::default()
            }),
            ready: AtomicBool::new(false),
        }
    }

    /// The config file being served.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Marks the process ready (listeners bound, first snapshot live).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The reload status.
    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Loads the file again and, if it is valid, makes it live. Returns the new generation, or
    /// every error of the file (the old config keeps serving).
    pub async fn reload(&self, trigger: &str) -> Result<u64, String> {
        let _serial = self.serial.lock().await;
        let (path, registry) = (self.path.clone(), self.registry.clone());
        let loaded = tokio::task::spawn_blocking(move || config::load(&path, &registry))
            .await
            .map_err(|e| format!("reload task failed: {e}"));
        let config = match loaded {
            Ok(Ok(c)) => c,
            Ok(Err(errors)) => return Err(self.failed(trigger, errors.to_string())),
            Err(e) => return Err(self.failed(trigger, e)),
        };
        let pending = self.restart_only_changes(&config);
        if let Err(e) = access_log::configure(config.access_log.sink.as_ref()) {
            return Err(self.failed(trigger, e));
        }
        let generation = self.snapshot.load().generation + 1;
        let next = Snapshot::new(config, generation);
        // Targets are discovered and checked before the swap, so the new config's first request
        // already sees healthy targets.
        next.prime().await;
        next.start_tasks();
        let tracing_changed = next.config.tracing != self.snapshot.load().config.tracing;
        let new_tracing = tracing_changed.then(|| next.config.tracing.clone());
        let old = self.snapshot.swap(Arc::new(next));
        old.stop_tasks();
        if let Some(settings) = new_tracing {
            // The exporter is swapped behind its own pointer; spans of requests in flight during
            // the switch may go to either pipeline.
            if let Err(e) = crate::telemetry::trace::init(&settings) {
                tracing::error!(error = %e, "tracing settings not applied; the previous exporter keeps running");
            }
        }
        if let Some(m) = metrics() {
            m.reloads.with_label_values(&["ok"]).inc();
            m.generation
                .set(i64::try_from(generation).unwrap_or(i64::MAX));
        }
        if let Ok(mut s) = self.status.lock() {
            s.generation = generation;
            s.last_error = None;
            s.pending_restart = pending.clone();
        }
        for p in &pending {
            tracing::warn!(change = %p, "config change needs a restart or binary upgrade (docs/operations/admin-reload-upgrade.md)");
        }
        tracing::info!(trigger, generation, "config reloaded");
        Ok(generation)
    }

    fn failed(&self, trigger: &str, error: String) -> String {
        if let Some(m) = metrics() {
            m.reloads.with_label_values(&["failed"]).inc();
        }
        tracing::error!(trigger, error = %error, "config reload failed; the previous config keeps serving");
        if let Ok(mut s) = self.status.lock() {
            s.last_error = Some(error.clone());
        }
        error
    }

    /// Changes that cannot apply to a running process.
    fn restart_only_changes(&self, next: &GatewayConfig) -> Vec<String> {
        let mut out = Vec::new();
        let describe = |ls: &[Listener]| -> Vec<String> {
            let mut v: Vec<String> = ls
                .iter()
                .map(|l| format!("{} h2c={} tls={}", l.address, l.h2c, l.tls.is_some()))
                .collect();
            v.sort();
            v
        };
        if describe(&self.bound_listeners) != describe(&next.listeners) {
            out.push("listeners changed".to_string());
        }
        let admin = |a: &Option<AdminSettings>| a.as_ref().map(|a| a.address);
        if admin(&self.bound_admin) != admin(&next.admin) {
            out.push("admin address changed".to_string());
        }
        out
    }

    /// Reloads whenever the file's modification time changes (polled: no platform watcher to
    /// miss events on editors that replace the file).
    pub fn watch_file(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send {
        let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        // The baseline is taken now, before readiness is reported, not when the task first
        // runs: an edit made right after "ready" must count as a change.
        let mut last: Option<SystemTime> = mtime(&self.path);
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
                let now = mtime(&self.path);
                match now {
                    // Deleted (or moved away mid-edit): nothing to read, so nothing changes; said
                    // once, so an operator who removed it by mistake knows the gateway noticed.
                    None if last.is_some() => {
                        last = None;
                        tracing::warn!(path = %self.path.display(),
                            "config file is gone; the running config keeps serving until it is back");
                    }
                    Some(_) if now != last => {
                        last = now;
                        let _ = self.reload("file change").await;
                    }
                    _ => {}
                }
            }
        }
    }
}
