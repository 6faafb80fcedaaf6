//! Hot reload: build the complete next snapshot off the request path (parse, validate, compile
//! routes, instantiate plugins, discover and health-check targets), then swap it in atomically.
//! Requests in flight finish on the snapshot they started with; a broken config changes nothing
//! but the error report.
//!
//! Triggers: `POST /reload` on the admin listener, SIGHUP, and (with `server.watch_config`) a
//! change of the file, or of a certificate or key file it names (listener certificates and
//! upstream client certificates are read again by every reload).
//!
//! Keys that only a restart applies (`config::ProcessSettings` classifies them) are compared with
//! the config the process started with: a change is logged once and listed in `pending_restart`
//! until it is reverted or the process restarts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tollgate_plugin_api::PluginRegistry;

use crate::config::{self, ConfigErrors, ProcessSettings};
use crate::snapshot::Snapshot;
use crate::telemetry::{access_log, metrics::metrics};

/// What the last reload attempt left behind, for `/readyz` and the reload answer.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// Generation of the live config.
    pub generation: u64,
    /// Error of the last failed reload, cleared by a successful one.
    pub last_error: Option<String>,
    /// Keys (`server.threads`, `listeners.public.address`, ...) that changed in the file but
    /// need a restart or upgrade to apply.
    pub pending_restart: Vec<String>,
}

/// Why a reload changed nothing; the previous config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has mistakes: every one of them, a line each.
    #[error("{0}")]
    Config(ConfigErrors),
    /// The task loading the file ended without an answer.
    #[error("reload task failed: {0}")]
    Task(tokio::task::JoinError),
    /// The new access log could not be opened.
    #[error("{0}")]
    AccessLog(access_log::AccessLogError),
}

/// Owns reloading for the process.
pub struct Reloader {
    path: PathBuf,
    registry: PluginRegistry,
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// The restart-only settings the process runs with (those of the config it started with).
    running: ProcessSettings,
    /// One reload at a time; a trigger during a reload waits for it.
    serial: tokio::sync::Mutex<()>,
    status: Mutex<ReloadStatus>,
    ready: AtomicBool,
    watcher: Mutex<Watcher>,
}

/// The file watcher, on or off as the live config's `server.watch_config` says.
#[derive(Default)]
struct Watcher {
    /// Whether the live config asks for it.
    wanted: bool,
    /// Where it runs: the background runtime, once started (none after shutdown).
    runtime: Option<tokio::runtime::Handle>,
    /// Stops the running watcher.
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl Reloader {
    /// A reloader for the config at `path`, currently live in `snapshot`.
    pub fn new(path: PathBuf, registry: PluginRegistry, snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        let (running, generation, watch) = {
            let s = snapshot.load();
            (
                ProcessSettings::of(&s.config),
                s.generation,
                s.config.server.watch_config,
            )
        };
        Self {
            path,
            registry,
            snapshot,
            running,
            serial: tokio::sync::Mutex::new(()),
            status: Mutex::new(ReloadStatus {
                generation,
                ..ReloadStatus::default()
            }),
            ready: AtomicBool::new(false),
            watcher: Mutex::new(Watcher {
                wanted: watch,
                ..Watcher::default()
            }),
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
    pub async fn reload(self: &Arc<Self>, trigger: &str) -> Result<u64, ReloadError> {
        let _serial = self.serial.lock().await;
        let (path, registry) = (self.path.clone(), self.registry.clone());
        let loaded = tokio::task::spawn_blocking(move || config::load(&path, &registry)).await;
        let built = match loaded {
            Ok(Ok(b)) => b,
            Ok(Err(errors)) => return Err(self.failed(trigger, ReloadError::Config(errors))),
            Err(e) => return Err(self.failed(trigger, ReloadError::Task(e))),
        };
        let pending = self
            .running
            .restart_only_changes(&ProcessSettings::of(&built.config));
        if let Err(e) = access_log::configure(built.config.access_log.sink.as_ref()) {
            return Err(self.failed(trigger, ReloadError::AccessLog(e)));
        }
        let generation = self.snapshot.load().generation + 1;
        let next = Snapshot::after(built, generation, Some(&self.snapshot.load()));
        // Targets are discovered and checked before the swap, so the new config's first request
        // already sees healthy targets.
        next.prime().await;
        next.start_tasks();
        // Brokers that readiness requires connect before the config goes live.
        next.brokers.settle(next.brokers.longest_connect()).await;
        let (level, watch) = (
            next.config.log.level.clone(),
            next.config.server.watch_config,
        );
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
        if level != old.config.log.level {
            if let Err(e) = crate::logging::set_level(&level) {
                tracing::error!(error = %e, "the previous log level stays");
            }
        }
        self.set_watching(watch);
        if let Some(m) = metrics() {
            m.reloads.with_label_values(&["ok"]).inc();
            m.generation
                .set(i64::try_from(generation).unwrap_or(i64::MAX));
        }
        let newly_pending: Vec<String> = match self.status.lock() {
            Ok(mut s) => {
                s.generation = generation;
                s.last_error = None;
                let new = pending
                    .iter()
                    .filter(|p| !s.pending_restart.contains(p))
                    .cloned()
                    .collect();
                s.pending_restart = pending;
                new
            }
            Err(_) => pending,
        };
        // Once per change, not on every reload while it stays pending.
        for key in &newly_pending {
            tracing::warn!(key = %key, "config change not applied: it needs a restart or a binary upgrade (docs/operations/admin-reload-upgrade.md)");
        }
        tracing::info!(trigger, generation, "config reloaded");
        crate::certificates::warn_expired(&self.snapshot.load().config);
        Ok(generation)
    }

    fn failed(&self, trigger: &str, error: ReloadError) -> ReloadError {
        if let Some(m) = metrics() {
            m.reloads.with_label_values(&["failed"]).inc();
        }
        tracing::error!(trigger, error = %error, "config reload failed; the previous config keeps serving");
        if let Ok(mut s) = self.status.lock() {
            s.last_error = Some(error.to_string());
        }
        error
    }

    /// Starts the file watcher on `runtime` if the live config asks for it, and keeps it in step
    /// with `server.watch_config` from then on.
    pub fn start_watching(self: &Arc<Self>, runtime: tokio::runtime::Handle) {
        if let Ok(mut w) = self.watcher.lock() {
            w.runtime = Some(runtime);
        }
        self.reconcile_watcher();
    }

    /// Stops the file watcher for good (shutdown).
    pub fn stop_watching(&self) {
        if let Ok(mut w) = self.watcher.lock() {
            w.runtime = None;
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(true);
            }
        }
    }

    /// Whether the file watcher runs.
    pub fn is_watching(&self) -> bool {
        self.watcher.lock().is_ok_and(|w| w.stop.is_some())
    }

    fn set_watching(self: &Arc<Self>, wanted: bool) {
        if let Ok(mut w) = self.watcher.lock() {
            w.wanted = wanted;
        }
        self.reconcile_watcher();
    }

    fn reconcile_watcher(self: &Arc<Self>) {
        let Ok(mut w) = self.watcher.lock() else {
            return;
        };
        match (w.wanted, w.stop.is_some(), w.runtime.clone()) {
            (true, false, Some(runtime)) => {
                let (stop, stopped) = tokio::sync::watch::channel(false);
                // Created here, so the baseline modification time is the file just loaded.
                runtime.spawn(self.clone().watch_file(stopped));
                w.stop = Some(stop);
                tracing::info!(path = %self.path.display(), "watching the config file for changes");
            }
            (false, true, _) => {
                // The watcher may be the caller (its reload turned watching off): it sees the
                // stop once that reload returns.
                if let Some(stop) = w.stop.take() {
                    let _ = stop.send(true);
                }
                tracing::info!(path = %self.path.display(), "no longer watching the config file");
            }
            _ => {}
        }
    }

    /// Reloads whenever the config file, or a certificate or key file the live config names,
    /// changes (polled: no platform watcher to miss events on editors or tools such as
    /// cert-manager that replace a file by renaming another over it; the inode is part of the
    /// fingerprint, so a replacement with the same size and time still counts).
    pub fn watch_file(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send {
        // The baseline is taken now, before readiness is reported, not when the task first
        // runs: an edit made right after "ready" must count as a change.
        let mut last = self.fingerprints();
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
                let now = self.fingerprints();
                let mut changed = None;
                for (path, print) in &now {
                    match (print, last.get(path)) {
                        // A file the config names only now: it was read by the reload that
                        // named it.
                        (_, None) => {}
                        // Deleted (or moved away mid-edit): nothing to read, so nothing
                        // changes; said once, so an operator who removed it by mistake knows
                        // the gateway noticed.
                        (None, Some(Some(_))) if *path == self.path => {
                            tracing::warn!(path = %path.display(),
                                "config file is gone; the running config keeps serving until it is back");
                        }
                        (None, Some(Some(_))) => {
                            tracing::warn!(path = %path.display(),
                                "certificate file is gone; the running certificate keeps serving until it is back");
                        }
                        (Some(p), Some(before)) if Some(p) != before.as_ref() => {
                            changed.get_or_insert(path.clone());
                        }
                        _ => {}
                    }
                }
                if let Some(path) = changed {
                    let trigger = if path == self.path {
                        "file change"
                    } else {
                        "certificate file change"
                    };
                    let _ = self.reload(trigger).await;
                    // The reload may name other files; they start from what it read.
                    last = self.fingerprints();
                } else {
                    last = now;
                }
            }
        }
    }

    /// The watched files and what each looks like now (`None`: cannot be read).
    fn fingerprints(&self) -> BTreeMap<PathBuf, Option<Fingerprint>> {
        let snapshot = self.snapshot.load();
        std::iter::once(self.path.clone())
            .chain(snapshot.config.certificate_files())
            .map(|p| {
                let print = Fingerprint::of(&p);
                (p, print)
            })
            .collect()
    }
}

/// What a watched file looks like, enough to see it was rewritten or replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Fingerprint {
    /// Follows symbolic links, so a Kubernetes secret volume's swapped `..data` link counts.
    fn of(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: m.modified().ok(),
            len: m.len(),
            inode: m.ino(),
        })
    }
}
