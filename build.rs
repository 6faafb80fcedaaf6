//! Writes the list of built-in plugins that `plugins::builtin_registry()` registers, from the
//! workspace itself: every folder `plugins/NAME/` whose Cargo.toml names its factory,
//!
//! ```toml
//! [package.metadata.tollgate]
//! plugin = "RequireJsonFieldPlugin"
//! ```
//!
//! and that this package depends on (`tollgate-NAME = { path = "plugins/NAME" }`). Adding a plugin
//! thus touches its own folder and that one dependency line. The output is plain code naming
//! each factory, so what it lists is what is registered and linked: no link-time collection that
//! a linker could drop, no code run before `main`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use toml::de::{DeTable, DeValue};

/// One plugin to register.
struct Builtin {
    /// `plugins/NAME`, for messages and the test that checks the list.
    folder: String,
    /// The name the crate is known by in this package's code.
    extern_name: String,
    /// The factory type, a path inside the crate.
    factory: String,
}

fn main() -> ExitCode {
    match generate() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn generate() -> Result<(), String> {
    let root =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("no CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("no OUT_DIR")?);
    println!("cargo::rerun-if-changed=Cargo.toml");
    // A new plugin needs a new dependency line, which changes Cargo.toml and reruns this; a
    // folder without one is not built into the binary, and the registry's test reports it.
    let root_manifest = read(&root.join("Cargo.toml"))?;
    let root_doc = parse(&root_manifest, "Cargo.toml")?;
    let mut builtins = Vec::new();
    for folder in plugin_folders(&root)? {
        let manifest_path = root.join(&folder).join("Cargo.toml");
        println!("cargo::rerun-if-changed={folder}/Cargo.toml");
        let manifest = read(&manifest_path)?;
        let doc = parse(&manifest, &format!("{folder}/Cargo.toml"))?;
        let Some(factory) = lookup(&doc, &["package", "metadata", "tollgate", "plugin"]) else {
            continue;
        };
        let factory = factory
            .as_str()
            .filter(|f| is_rust_path(f))
            .ok_or_else(|| {
                format!(
                    "{folder}/Cargo.toml: [package.metadata.tollgate] plugin must be the name of \
                     the crate's plugin factory type, e.g. plugin = \"RequireJsonFieldPlugin\""
                )
            })?
            .to_owned();
        let package = lookup(&doc, &["package", "name"])
            .and_then(DeValue::as_str)
            .ok_or_else(|| format!("{folder}/Cargo.toml: no [package] name"))?;
        let lib_name = lookup(&doc, &["lib", "name"])
            .and_then(DeValue::as_str)
            .unwrap_or(package);
        let extern_name = dependency_name(&root_doc, &folder, package, lib_name)?;
        builtins.push(Builtin {
            folder,
            extern_name,
            factory,
        });
    }
    fs::write(out.join("builtin_plugins.rs"), render(&builtins))
        .map_err(|e| format!("cannot write the plugin list: {e}"))
}

/// `plugins/NAME` for every folder under plugins/ with a Cargo.toml, in name order (which is the
/// order of registration; priorities, not this order, decide the order plugins run in).
fn plugin_folders(root: &Path) -> Result<Vec<String>, String> {
    let entries =
        fs::read_dir(root.join("plugins")).map_err(|e| format!("cannot list plugins/: {e}"))?;
    let mut folders = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list plugins/: {e}"))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if entry.path().join("Cargo.toml").is_file() {
            folders.push(format!("plugins/{name}"));
        }
    }
    folders.sort();
    Ok(folders)
}

/// The name this package's code uses for the plugin crate in `folder`; an error that says what
/// to add when the package does not depend on it.
fn dependency_name(
    root_doc: &DeValue<'_>,
    folder: &str,
    package: &str,
    lib_name: &str,
) -> Result<String, String> {
    let deps = lookup(root_doc, &["dependencies"]).and_then(DeValue::as_table);
    for (key, spec) in deps.into_iter().flatten() {
        let spec = spec.get_ref();
        let path = spec.get("path").and_then(|p| p.get_ref().as_str());
        if path.map(|p| p.trim_end_matches('/')) != Some(folder) {
            continue;
        }
        // Renamed (`x = { package = "tollgate-x", ... }`): the code knows it by the key.
        let name = if spec.get("package").is_some() {
            key.get_ref().as_ref()
        } else {
            lib_name
        };
        return Ok(name.replace('-', "_"));
    }
    Err(format!(
        "{folder}/Cargo.toml declares a tollgate plugin, but the gateway does not depend on it: \
         add `{package} = {{ path = \"{folder}\" }}` under [dependencies] in Cargo.toml"
    ))
}

fn render(builtins: &[Builtin]) -> String {
    let mut code = String::from(
        "// Generated by build.rs from plugins/*/Cargo.toml ([package.metadata.tollgate]).\n\n\
         /// Registers every built-in plugin.\n\
         fn register_builtins(registry: &mut PluginRegistry) {\n",
    );
    for b in builtins {
        let _ = writeln!(
            code,
            "    registry.register::<{}::{}>();",
            b.extern_name, b.factory
        );
    }
    code.push_str(
        "}\n\n/// The folders the built-in plugins come from, in registration order.\n\
         #[allow(dead_code)]\n\
         const BUILTIN_FOLDERS: &[&str] = &[\n",
    );
    for b in builtins {
        let _ = writeln!(code, "    {:?},", b.folder);
    }
    code.push_str("];\n");
    code
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn parse<'a>(src: &'a str, name: &str) -> Result<DeValue<'a>, String> {
    DeTable::parse(src)
        .map(|t| DeValue::Table(t.into_inner()))
        .map_err(|e| format!("{name}: {e}"))
}

fn lookup<'a, 'i>(doc: &'a DeValue<'i>, keys: &[&str]) -> Option<&'a DeValue<'i>> {
    keys.iter()
        .try_fold(doc, |value, key| value.get(*key).map(|v| v.get_ref()))
}

/// `Name` or `module::Name`: what may follow `crate_name::` in a type path.
fn is_rust_path(s: &str) -> bool {
    !s.is_empty()
        && s.split("::").all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_alphanumeric() || c == '_')
        })
}
