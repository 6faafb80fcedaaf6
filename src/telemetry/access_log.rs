//! The access log: one JSON line per request, written by a thread of its own so a slow disk or
//! pipe never stalls a request. Lines are queued in a bounded channel; when it is full, lines are
//! dropped and counted rather than blocking the proxy.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// Access log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    /// Where lines go; `None` turns the log off.
    pub sink: Option<Sink>,
    /// Fields written, in order; empty means all.
    pub fields: Vec<String>,
}

/// Every field a line can have.
pub const FIELDS: &[&str] = &[
    "time",
    "request_id",
    "trace_id",
    "client_ip",
    "method",
    "host",
    "path",
    "query",
    "protocol",
    "route",
    "upstream",
    "target",
    "status",
    "bytes_sent",
    "bytes_received",
    "duration_ms",
    "upstream_ms",
    "attempts",
    "error",
];

const QUEUE: usize = 64 * 1024;

struct Writer {
    tx: SyncSender<String>,
    sink: Sink,
}

/// Read on every request without a lock; replaced on (re)configuration.
static WRITER: ArcSwapOption<Writer> = ArcSwapOption::const_empty();
/// Serialises reconfiguration.
static CONFIGURE: Mutex<()> = Mutex::new(());
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped because the writer could not keep up.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Why the access log could not be (re)configured; the previous writer keeps going.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// A reconfiguration panicked while holding the lock.
    #[error("access log lock poisoned")]
    Poisoned,
    /// The file cannot be opened for appending.
    #[error("cannot open access log {}: {error}", path.display())]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The writer thread cannot be started.
    #[error("cannot start the access log writer: {0}")]
    Thread(std::io::Error),
}

/// Starts (or retargets, on reload) the writer thread for `sink`.
pub fn configure(sink: Option<&Sink>) -> Result<(), AccessLogError> {
    let _serial = CONFIGURE.lock().map_err(|_| AccessLogError::Poisoned)?;
    let Some(sink) = sink.cloned() else {
        WRITER.store(None);
        return Ok(());
    };
    if WRITER.load().as_ref().is_some_and(|w| w.sink == sink) {
        return Ok(());
    }
    let out: Box<dyn Write + Send> = match &sink {
        Sink::Stdout => Box::new(std::io::stdout()),
        Sink::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|error| AccessLogError::Open {
                    path: p.clone(),
                    error,
                })?,
        ),
    };
    let (tx, rx) = sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_loop(rx, out))
        .map_err(AccessLogError::Thread)?;
    // Dropping the old sender ends the old thread once it has written what it holds.
    WRITER.store(Some(Arc::new(Writer { tx, sink })));
    Ok(())
}

fn write_loop(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        let _ = out.write_all(b"\n");
        // Batch whatever else is queued, then flush so lines show up promptly.
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
    }
}

/// Whether lines are being written (so the proxy can skip building them).
pub fn enabled() -> bool {
    WRITER.load().is_some()
}

/// Queues one line; never blocks.
pub fn write(line: String) {
    let guard = WRITER.load();
    let Some(w) = guard.as_ref() else {
        return;
    };
    match w.tx.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Builds a line from `(field, value)` pairs: the configured fields in the configured order, or
/// every pair in its given order when none are configured.
///
/// Written by hand rather than through a `serde_json::Map`, which sorts its keys (the docs promise
/// the configured order) and would copy every value and key: a line is built per request.
pub fn line(fields: &[String], values: &[(&'static str, serde_json::Value)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(LINE_CAPACITY);
    out.push('{');
    let mut push = |name: &str, value: &serde_json::Value| {
        if out.len() > 1 {
            out.push(',');
        }
        // Names come from `FIELDS` (checked at load): plain identifiers that need no escaping.
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
        // `Value`'s Display writes compact JSON straight into the line.
        let _ = write!(out, "{value}");
    };
    if fields.is_empty() {
        for (name, value) in values {
            push(name, value);
        }
    } else {
        for f in fields {
            if let Some((name, value)) = values.iter().find(|(k, _)| k == f) {
                push(name, value);
            }
        }
    }
    out.push('}');
    out
}

/// Room for a typical line with every field, so building one does not reallocate.
const LINE_CAPACITY: usize = 512;

/// Stops accepting lines and gives the writer a moment to write what is queued (it flushes after
/// every batch), for a clean exit.
pub fn shutdown() {
    if WRITER.swap(None).is_some() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn values() -> Vec<(&'static str, Value)> {
        vec![
            ("time", json!("2026-12-01T10:00:00.000Z")),
            ("request_id", json!("r-1")),
            ("trace_id", Value::Null),
            ("path", json!("/a \"quoted\" \\ path\n")),
            ("route", json!("users")),
            ("status", json!(200)),
            ("duration_ms", json!(1.5)),
        ]
    }

    #[test]
    fn configured_fields_keep_their_order() {
        let fields = ["status", "time", "route"].map(String::from);
        assert_eq!(
            line(&fields, &values()),
            r#"{"status":200,"time":"2026-12-01T10:00:00.000Z","route":"users"}"#
        );
    }

    #[test]
    fn without_fields_every_value_is_written_in_the_given_order() {
        let written = line(&[], &values());
        assert_eq!(
            written,
            r#"{"time":"2026-12-01T10:00:00.000Z","request_id":"r-1","trace_id":null,"path":"/a \"quoted\" \\ path\n","route":"users","status":200,"duration_ms":1.5}"#
        );
        // Still one valid JSON object, with the values as given.
        let parsed: Value = serde_json::from_str(&written).unwrap();
        assert_eq!(parsed["path"], "/a \"quoted\" \\ path\n");
    }

    #[test]
    fn unknown_configured_fields_are_skipped() {
        let fields = ["route", "bytes_sent"].map(String::from);
        assert_eq!(line(&fields, &values()), r#"{"route":"users"}"#);
    }
}
