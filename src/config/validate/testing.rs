//! What the validation rooms' tests share: loading a text through `load_str` as `gateway.toml`
//! with the built-in plugins, and the errors as the user sees them.
//!
//! A config without `[[listeners]]` is itself an error, so one is appended at the end of a text
//! that has none (every line number of the text stays as written).

use std::path::Path;

use super::super::{load_str, Built};

/// The listener appended to texts without one.
const LISTENER: &str = "\n[[listeners]]\naddress = \"127.0.0.1:18080\"\n";

fn load(text: &str) -> Result<Built, Vec<String>> {
    let text = if text.contains("[[listeners]]") {
        text.to_string()
    } else {
        format!("{text}{LISTENER}")
    };
    load_exact(&text)
}

/// `text` loaded as it is.
pub fn load_exact(text: &str) -> Result<Built, Vec<String>> {
    let registry = crate::plugins::builtin_registry();
    load_str(Path::new("gateway.toml"), text, &registry)
        .map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

/// Every error of `text`, each as `gateway.toml:LINE:COL: message`; panics if it loads.
#[track_caller]
pub fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("the config loads:\n{text}"),
        Err(errors) => errors,
    }
}

/// The loaded config; panics with the errors if it does not load.
#[track_caller]
pub fn valid(text: &str) -> Built {
    match load(text) {
        Ok(built) => built,
        Err(errors) => panic!("the config does not load:\n{}", errors.join("\n")),
    }
}

/// An upstream `u` with one target, for texts about routes.
pub const UPSTREAM: &str = "[upstreams.u]\ntargets = [\"127.0.0.1:3000\"]\n";
