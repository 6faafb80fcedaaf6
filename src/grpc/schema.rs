//! Loading descriptors from `.proto` files or a descriptor set, completing them with the
//! embedded files, and compiling every binding into one lookup table.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use bytes::BufMut;
use http::Method;
use miette::Diagnostic;
use prost::Message;
use prost_reflect::DescriptorPool;

use super::binding::Binding;
use super::embedded;
use super::matcher::{split_path, PathTrie};
use super::rules::{RawFile, RawSet};

/// Descriptors and bindings of one route, immutable once built.
#[derive(Debug)]
pub struct Schema {
    /// Every message type, for JSON mapping and error details.
    pub pool: DescriptorPool,
    /// All bindings; indices are the trie's ids.
    pub bindings: Vec<Binding>,
    trie: PathTrie,
}

/// The outcome of looking a request up.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// A binding, and the path segments the variables take from (verb removed).
    Found(&'a Binding, Vec<&'a str>),
    /// Bindings exist for the path, not for this method.
    WrongMethod(Vec<Method>),
    /// No binding for the path.
    NotFound,
}

/// Which services and how unannotated methods are mapped.
#[derive(Debug, Clone, Default)]
pub struct Selection<'a> {
    /// Only these services; all when empty.
    pub services: &'a [String],
    /// Map methods without rules to `POST /pkg.Service/Method`.
    pub auto_map: bool,
}

impl Schema {
    /// Builds a schema from encoded FileDescriptorProtos (in any order). Imports missing from
    /// `files` are taken from the embedded files and protobuf's well-known types.
    pub fn from_files(
        files: Vec<(String, Vec<u8>)>,
        sel: &Selection<'_>,
    ) -> Result<Schema, String> {
        let files = complete(files)?;
        let mut set = Vec::new();
        for (_, bytes) in &files {
            // FileDescriptorSet.file (1, length-delimited), the original bytes untouched.
            set.put_u8(0x0a);
            prost::encoding::encode_varint(bytes.len() as u64, &mut set);
            set.put_slice(bytes);
        }
        let pool = DescriptorPool::decode(set.as_slice())
            .map_err(|e| format!("invalid descriptors: {e}"))?;
        let mut bindings = Vec::new();
        let mut found_services = HashSet::new();
        for (name, bytes) in &files {
            let raw = RawFile::decode(bytes.as_slice())
                .map_err(|e| format!("descriptor of `{name}`: {e}"))?;
            for svc in &raw.service {
                let full = if raw.package.is_empty() {
                    svc.name.clone()
                } else {
                    format!("{}.{}", raw.package, svc.name)
                };
                let wanted = if sel.services.is_empty() {
                    !full.starts_with("grpc.reflection.")
                } else {
                    sel.services.contains(&full)
                };
                if !wanted {
                    continue;
                }
                found_services.insert(full.clone());
                let service = pool
                    .get_service_by_name(&full)
                    .ok_or_else(|| format!("service `{full}` missing from the descriptor pool"))?;
                for m in &svc.method {
                    let method = service
                        .methods()
                        .find(|d| d.name() == m.name)
                        .ok_or_else(|| format!("method `{full}.{}` missing", m.name))?;
                    match m.options.as_ref().and_then(|o| o.http.as_ref()) {
                        Some(rule) => {
                            bindings.push(Binding::compile(&method, rule)?);
                            for extra in &rule.additional_bindings {
                                if !extra.additional_bindings.is_empty() {
                                    return Err(format!(
                                        "method `{}`: additional_bindings cannot nest",
                                        method.full_name()
                                    ));
                                }
                                bindings.push(Binding::compile(&method, extra)?);
                            }
                        }
                        None if sel.auto_map => bindings.push(Binding::auto(&method)?),
                        None => {}
                    }
                }
            }
        }
        for s in sel.services {
            if !found_services.contains(s) {
                return Err(format!("service `{s}` is not in the schema"));
            }
        }
        Ok(Self::with_bindings(pool, bindings))
    }

    /// A schema of already compiled bindings.
    pub fn with_bindings(pool: DescriptorPool, bindings: Vec<Binding>) -> Schema {
        let mut trie = PathTrie::default();
        for (i, b) in bindings.iter().enumerate() {
            trie.insert(&b.template, i);
        }
        Schema {
            pool,
            bindings,
            trie,
        }
    }

    /// Whether any binding has this path, whatever its method.
    pub fn has_path(&self, path: &str) -> bool {
        !matches!(self.lookup(None, path), Lookup::NotFound)
    }

    /// Finds the binding of `method` (`None`: any) and `path` (without the query).
    pub fn lookup<'a>(&'a self, method: Option<&Method>, path: &'a str) -> Lookup<'a> {
        let (with_verb, plain) = split_path(path);
        let ok = |b: &Binding| method.is_none_or(|m| b.accepts_method(m));
        if let Some((segs, verb)) = &with_verb {
            let found = self.trie.find(segs, &mut |id| {
                let b = &self.bindings[id];
                b.template.verb.as_deref() == Some(*verb) && ok(b)
            });
            if let Some(id) = found {
                return Lookup::Found(&self.bindings[id], segs.raw.clone());
            }
        }
        let found = self.trie.find(&plain, &mut |id| {
            let b = &self.bindings[id];
            b.template.verb.is_none() && ok(b)
        });
        if let Some(id) = found {
            return Lookup::Found(&self.bindings[id], plain.raw.clone());
        }
        // The path matches with some other method: collect them for 405's Allow.
        let mut allowed = Vec::new();
        let mut collect = |id: usize, verb: Option<&str>| {
            let b = &self.bindings[id];
            if b.template.verb.as_deref() == verb {
                let m = b.http_method.clone().unwrap_or(Method::GET);
                if !allowed.contains(&m) {
                    allowed.push(m);
                }
            }
            false
        };
        if let Some((segs, verb)) = &with_verb {
            self.trie.find(segs, &mut |id| collect(id, Some(verb)));
        }
        self.trie.find(&plain, &mut |id| collect(id, None));
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::WrongMethod(allowed)
        }
    }
}

/// Runs a schema build step, turning a panic inside the descriptor libraries (on descriptors
/// they did not expect, e.g. from a misbehaving reflection server) into an error, so that no
/// schema input can take the gateway down.
pub fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err("the descriptors could not be processed (the descriptor library failed on them)".into())
    })
}

/// Splits an encoded FileDescriptorSet into `(file name, original bytes)`.
pub fn split_set(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let set = RawSet::decode(bytes).map_err(|e| format!("not a FileDescriptorSet: {e}"))?;
    set.file
        .into_iter()
        .map(|b| {
            let f = RawFile::decode(b.as_slice())
                .map_err(|e| format!("not a FileDescriptorProto: {e}"))?;
            Ok((f.name, b))
        })
        .collect()
}

/// Adds imports missing from `files` (and the always-present error model files) from the
/// embedded files, failing with the first import nobody provides.
fn complete(mut files: Vec<(String, Vec<u8>)>) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut have: HashSet<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let mut wanted: Vec<String> = embedded::ALWAYS.iter().map(|s| s.to_string()).collect();
    for (name, bytes) in &files {
        let raw = RawFile::decode(bytes.as_slice())
            .map_err(|e| format!("descriptor of `{name}`: {e}"))?;
        for dep in raw.dependency {
            wanted.push(dep);
        }
    }
    let missing: Vec<String> = wanted
        .into_iter()
        .filter(|n| !have.contains(n))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if missing.is_empty() {
        return Ok(files);
    }
    let builtin: HashSet<&str> = embedded::FILES.iter().map(|(n, _)| *n).collect();
    for name in &missing {
        if !builtin.contains(name.as_str()) && !name.starts_with("google/protobuf/") {
            let importer = files
                .iter()
                .find(|(_, b)| {
                    RawFile::decode(b.as_slice()).is_ok_and(|f| f.dependency.contains(name))
                })
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            return Err(format!(
                "`{importer}` imports `{name}`, which the schema does not contain (build descriptor sets with --include_imports)"
            ));
        }
    }
    let names: Vec<&str> = missing.iter().map(String::as_str).collect();
    for (name, bytes) in split_set(&embedded::compile(&names)?)? {
        if have.insert(name.clone()) {
            files.push((name, bytes));
        }
    }
    Ok(files)
}

/// Compiles `.proto` files with protox. Errors name the file, line and column.
pub fn compile_protos(
    files: &[PathBuf],
    includes: &[PathBuf],
    base: &Path,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut chain = protox::file::ChainFileResolver::new();
    for inc in includes {
        chain.add(protox::file::IncludeFileResolver::new(inc.clone()));
    }
    chain.add(embedded::EmbeddedResolver);
    chain.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(chain);
    compiler.include_imports(true);
    for f in files {
        let path = if f.is_absolute() {
            f.clone()
        } else if base.join(f).is_file() && includes.iter().any(|i| base.join(f).starts_with(i)) {
            base.join(f)
        } else {
            f.clone()
        };
        compiler.open_file(&path).map_err(|e| protox_error(&e, f))?;
    }
    split_set(&compiler.encode_file_descriptor_set())
}

/// A protox error as `file:line:col: message`, the position taken from its first label.
fn protox_error(e: &protox::Error, opened: &Path) -> String {
    let file = e
        .file()
        .map(str::to_string)
        .unwrap_or_else(|| opened.display().to_string());
    let position = (|| {
        let src = e.source_code()?;
        let label = e.labels()?.next()?;
        let contents = src.read_span(label.inner(), 0, 0).ok()?;
        Some((contents.line() + 1, contents.column() + 1))
    })();
    let mut msg = e.to_string();
    if let Some(help) = e.help() {
        msg = format!("{msg} ({help})");
    }
    match position {
        Some((line, col)) => format!("{file}:{line}:{col}: {msg}"),
        None => format!("{file}: {msg}"),
    }
}

/// Reads a binary FileDescriptorSet.
pub fn read_descriptor_set(path: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    split_set(&bytes).map_err(|e| format!("`{}`: {e}", path.display()))
}

/// Descriptor files by name, for reflection answers that repeat files.
pub fn dedup(files: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for (n, b) in files {
        if seen.insert(n.clone(), ()).is_none() {
            out.push((n, b));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const SVC: &str = r#"syntax = "proto3";
package t;
import "google/api/annotations.proto";
service S {
  rpc Get(Req) returns (Req) { option (google.api.http) = { get: "/v1/{name}" additional_bindings { post: "/v1/x" body: "*" } }; }
  rpc Plain(Req) returns (Req);
}
message Req { string name = 1; }
"#;

    #[test]
    fn annotations_survive_protox_compilation() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "s.proto", SVC);
        let files = compile_protos(
            &[PathBuf::from("s.proto")],
            &[dir.path().to_path_buf()],
            dir.path(),
        )
        .unwrap();
        let schema = Schema::from_files(files.clone(), &Selection::default()).unwrap();
        assert_eq!(schema.bindings.len(), 2);
        assert!(matches!(
            schema.lookup(Some(&Method::GET), "/v1/abc"),
            Lookup::Found(b, _) if b.grpc_path == "/t.S/Get"
        ));
        assert!(matches!(
            schema.lookup(Some(&Method::PUT), "/v1/x"),
            Lookup::WrongMethod(m) if m.len() == 2 && m.contains(&Method::GET) && m.contains(&Method::POST)
        ));
        assert!(schema
            .pool
            .get_message_by_name("google.rpc.BadRequest")
            .is_some());
        let auto = Schema::from_files(
            files,
            &Selection {
                services: &[],
                auto_map: true,
            },
        )
        .unwrap();
        assert!(matches!(
            auto.lookup(Some(&Method::POST), "/t.S/Plain"),
            Lookup::Found(..)
        ));
    }

    #[test]
    fn syntax_error_names_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "bad.proto",
            "syntax = \"proto3\";\nmessage M {\n  strin name = 1\n}\n",
        );
        let err = compile_protos(
            &[PathBuf::from("bad.proto")],
            &[dir.path().to_path_buf()],
            dir.path(),
        )
        .unwrap_err();
        // The missing `;` is noticed at the `}` that follows.
        assert!(err.starts_with("bad.proto:4:1: "), "{err}");
    }

    #[test]
    fn missing_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = compile_protos(
            &[PathBuf::from("nope.proto")],
            &[dir.path().to_path_buf()],
            dir.path(),
        )
        .unwrap_err();
        assert!(err.contains("nope.proto"), "{err}");
    }

    #[test]
    fn rule_naming_a_missing_field_fails_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "s.proto", &SVC.replace("{name}", "{nmae}"));
        let files = compile_protos(
            &[PathBuf::from("s.proto")],
            &[dir.path().to_path_buf()],
            dir.path(),
        )
        .unwrap();
        let err = Schema::from_files(files, &Selection::default()).unwrap_err();
        assert!(err.contains("`nmae` is not a field of `t.Req`"), "{err}");
    }

    #[test]
    fn garbage_descriptor_set_is_an_error() {
        assert!(split_set(&[0x0a, 0x05, 1, 2]).is_err());
        assert!(split_set(b"\xff\xff\xff").is_err());
    }
}
