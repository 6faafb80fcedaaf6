//! Process logging through `tracing`: level from `RUST_LOG` (else the config, changeable by
//! reload), text or JSON lines.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{log_filter, LogFormat};

/// Swaps the installed filter; set once the subscriber is installed.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber. pingora's own `log` records are bridged into it.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = from_env()
        .or_else(|| log_filter(default_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Json => lines.json().boxed(),
        LogFormat::Text => lines.boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
}

/// Why a reloaded level was not applied.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    /// The level is not a filter `tracing` reads.
    #[error("invalid log level: {0}")]
    Invalid(tracing_subscriber::filter::ParseError),
    /// The installed subscriber is gone.
    #[error("log level not applied: {0}")]
    NotApplied(reload::Error),
}

/// Applies a reloaded `[log] level`. `RUST_LOG`, when set, keeps winning over the config.
pub fn set_level(level: &str) -> Result<(), LevelError> {
    if from_env().is_some() {
        return Ok(());
    }
    let Some(handle) = FILTER.get() else {
        return Ok(());
    };
    let filter = log_filter(level).map_err(LevelError::Invalid)?;
    handle.reload(filter).map_err(LevelError::NotApplied)
}

/// The filter `RUST_LOG` asks for, when it is set and valid.
fn from_env() -> Option<EnvFilter> {
    std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .and_then(|v| log_filter(&v).ok())
}
