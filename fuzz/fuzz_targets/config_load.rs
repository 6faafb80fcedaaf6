//! The config loader on arbitrary text: `load_str` with every built-in plugin registered, as the
//! binary runs it. Beyond "no panic": every error must point inside the file (`FILE:LINE:COL`
//! with a line and column that exist) and say something.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tollgate::config::load_str;
use tollgate_plugin_api::PluginRegistry;

/// As if read from the repo's own gateway.toml, so relative paths in seeds (`proto/...`,
/// `tests/fixtures/...`) resolve to real files.
const CONFIG_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway.toml");

fn registry() -> &'static PluginRegistry {
    static REGISTRY: OnceLock<PluginRegistry> = OnceLock::new();
    REGISTRY.get_or_init(tollgate::plugins::builtin_registry)
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(CONFIG_PATH);
    let Err(errors) = load_str(path, src, registry()) else {
        return;
    };
    assert!(!errors.0.is_empty(), "a refused config must say why");
    let lines: Vec<&str> = src.split('\n').collect();
    for e in &errors.0 {
        assert!(
            !e.message.trim().is_empty(),
            "empty message at {}:{}",
            e.line,
            e.col
        );
        // A message may also point into another file (a .proto's own position).
        if e.file != path {
            continue;
        }
        let line = e.line.checked_sub(1).and_then(|i| lines.get(i));
        let width = line.map_or(0, |l| l.chars().count());
        assert!(
            line.is_some() && (1..=width + 1).contains(&e.col),
            "{}:{} is outside the file ({} lines): {}",
            e.line,
            e.col,
            lines.len(),
            e.message
        );
    }
});
