//! The docs cannot drift from the code: every ```toml block of README.md, CONTRIBUTING.md and
//! docs/**/*.md is loaded by `tollgate::config::load_str` with the binary's plugin registry.
//!
//! The convention (CONTRIBUTING.md, "Writing docs"):
//!
//! - A block with a `[[listeners]]` line is a **complete** file and is loaded as it is.
//! - Any other block is a **fragment**, loaded with a wrapper appended after it: a listener, and
//!   whatever the fragment refers to but leaves out (the route a `[routes.X.plugins.Y]` table
//!   belongs to (without an upstream when the fragment gives it a `publish` table), the upstream
//!   a route names, the `targets` of an upstream shown only for its `health_check` or `retry`).
//!   The wrapper only adds tables; it never changes the fragment.
//! - An HTML comment on the line right before the fence changes that:
//!   `<!-- docs-test: complete -->`, `<!-- docs-test: fragment -->`,
//!   `<!-- docs-test: error "part of the message" -->` (loading must fail with that text),
//!   `<!-- docs-test: skip "why" -->` (not a gateway config, or not checkable; the reason is
//!   required), `<!-- docs-test: env "NAME=VALUE" -->` (set while the block loads). Items
//!   combine with commas: `<!-- docs-test: complete, error "no `[[listeners]]`" -->`.
//!
//! A block that loads must also pass the JSON Schema of gateway.toml (`tollgate schema`), checked
//! by the `jsonschema` crate: the schema cannot refuse what the docs show.
//!
//! Blocks load as if the file were `gateway.toml` in a directory holding the files the docs'
//! examples name (`certs/`, `secrets/`, `proto/`, `api/books.pb`), made by [`example_files`].
//! A failure names the block's file and line, and maps the loader's `LINE:COL` into the doc.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const MARKER: &str = "<!-- docs-test:";

/// How a block is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Complete,
    Fragment,
}

/// One ```toml block and what its marker asks for.
#[derive(Debug)]
struct Block {
    /// The doc, relative to the repo root.
    file: String,
    /// 1-based line of the opening fence.
    line: usize,
    text: String,
    mode: Mode,
    error: Option<String>,
    skip: Option<String>,
    env: Vec<(String, String)>,
}

/// Every toml block of `markdown`; `Err` for a malformed or stray marker.
fn blocks(file: &str, markdown: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim_start().starts_with(MARKER) {
            let next = lines.get(i + 1).map(|l| fence(l));
            if !matches!(next, Some(Some((_, _, info))) if info == "toml") {
                return Err(format!(
                    "{file}:{}: a docs-test marker must be on the line right before a ```toml fence",
                    i + 1
                ));
            }
        }
        let Some((indent, ticks, info)) = fence(line) else {
            i += 1;
            continue;
        };
        // The fence ends at a line of at least as many backticks and nothing else; fences
        // nested in a longer one (a markdown example of a toml block) are its text.
        let end = (i + 1..lines.len())
            .find(|&j| {
                let t = lines[j].trim();
                t.len() >= ticks && t.bytes().all(|b| b == b'`')
            })
            .ok_or_else(|| format!("{file}:{}: unclosed code fence", i + 1))?;
        if info == "toml" {
            let text: String = lines[i + 1..end]
                .iter()
                .map(|l| format!("{}\n", l.get(indent..).unwrap_or(l.trim_start())))
                .collect();
            let marker = i.checked_sub(1).map(|p| lines[p].trim()).unwrap_or("");
            let mut block = Block {
                file: file.to_owned(),
                line: i + 1,
                mode: if text.lines().any(|l| l.trim() == "[[listeners]]") {
                    Mode::Complete
                } else {
                    Mode::Fragment
                },
                text,
                error: None,
                skip: None,
                env: Vec::new(),
            };
            if marker.starts_with(MARKER) {
                apply_marker(&mut block, marker).map_err(|e| format!("{file}:{i}: {e}"))?;
            }
            out.push(block);
        }
        i = end + 1;
    }
    Ok(out)
}

/// `Some((indent, backticks, info string))` when `line` opens a code fence.
fn fence(line: &str) -> Option<(usize, usize, &str)> {
    let indent = line.len() - line.trim_start().len();
    let rest = &line[indent..];
    let ticks = rest.bytes().take_while(|&b| b == b'`').count();
    (ticks >= 3).then(|| (indent, ticks, rest[ticks..].trim()))
}

/// Reads `<!-- docs-test: item, item -->` into `block`.
fn apply_marker(block: &mut Block, marker: &str) -> Result<(), String> {
    let body = marker
        .strip_prefix(MARKER)
        .and_then(|m| m.strip_suffix("-->"))
        .ok_or("a docs-test marker ends with `-->` on the same line")?;
    let mut rest = body.trim();
    while !rest.is_empty() {
        let word_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let (word, after) = rest.split_at(word_end);
        let after = after.trim_start();
        let (arg, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let close = quoted
                    .find('"')
                    .ok_or_else(|| format!("`{word}`: unclosed quote"))?;
                (Some(&quoted[..close]), quoted[close + 1..].trim_start())
            }
            None => (None, after),
        };
        match (word, arg) {
            ("complete", None) => block.mode = Mode::Complete,
            ("fragment", None) => block.mode = Mode::Fragment,
            ("error", Some(text)) if !text.is_empty() => block.error = Some(text.to_owned()),
            ("skip", Some(reason)) if !reason.trim().is_empty() => {
                block.skip = Some(reason.to_owned())
            }
            ("env", Some(pair)) if pair.contains('=') => {
                let (name, value) = pair.split_once('=').unwrap_or_default();
                block.env.push((name.to_owned(), value.to_owned()));
            }
            _ => {
                return Err(format!(
                    "unknown docs-test item `{word}{}`: write complete, fragment, \
                     error \"TEXT\", skip \"REASON\" or env \"NAME=VALUE\"",
                    arg.map(|a| format!(" \"{a}\"")).unwrap_or_default()
                ))
            }
        }
        rest = after
            .strip_prefix(',')
            .map(str::trim_start)
            .unwrap_or(after);
        if !after.is_empty() && !after.starts_with(',') {
            return Err(format!("expected `,` before `{after}`"));
        }
    }
    Ok(())
}

/// A TOML key for `name`: bare when it can be, else quoted.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Whether `text` opens the table `[section.name]` itself (not only tables below it).
fn defines(text: &str, section: &str, name: &str) -> bool {
    let header = format!("[{section}.{}]", key(name));
    text.lines().any(|l| l.trim() == header)
}

/// What a fragment needs appended to load on its own (see the module doc).
fn wrapper(fragment: &str) -> String {
    // A fragment that is not valid TOML gets no wrapper: the loader reports its syntax error.
    let Ok(table) = fragment.parse::<toml::Table>() else {
        return String::new();
    };
    let mut out = String::new();
    if !table.contains_key("listeners") {
        out.push_str("\n[[listeners]]\naddress = \"127.0.0.1:8080\"\n");
    }
    let empty = toml::Table::new();
    let sub = |t: &toml::Value, k: &str| t.get(k).is_some();
    let routes = table
        .get("routes")
        .and_then(|r| r.as_table())
        .unwrap_or(&empty);
    let upstreams = table
        .get("upstreams")
        .and_then(|u| u.as_table())
        .unwrap_or(&empty);
    let mut needed = BTreeSet::new();
    for (i, (name, route)) in routes.iter().enumerate() {
        let has_path = ["exact", "prefix", "template"]
            .iter()
            .any(|k| sub(route, k));
        match route.get("upstream").and_then(|u| u.as_str()) {
            Some(up) => {
                needed.insert(up.to_owned());
            }
            // A publish route has no upstream.
            None if !has_path && !defines(fragment, "routes", name) && sub(route, "publish") => {
                let _ = write!(
                    out,
                    "\n[routes.{}]\nprefix = \"/docs-test-{i}\"\n",
                    key(name)
                );
            }
            None if !has_path && !defines(fragment, "routes", name) => {
                let _ = write!(
                    out,
                    "\n[routes.{}]\nprefix = \"/docs-test-{i}\"\nupstream = \"docs-test\"\n",
                    key(name)
                );
                needed.insert("docs-test".to_owned());
            }
            None => {}
        }
    }
    for (name, up) in upstreams {
        let complete = sub(up, "targets") || sub(up, "discovery");
        if !complete && !defines(fragment, "upstreams", name) {
            needed.insert(name.clone());
        }
    }
    for name in needed {
        let up = upstreams.get(&name);
        if up.is_some_and(|u| sub(u, "targets") || sub(u, "discovery")) {
            continue;
        }
        if up.is_some() && defines(fragment, "upstreams", &name) {
            continue;
        }
        let _ = write!(
            out,
            "\n[upstreams.{}]\ntargets = [\"127.0.0.1:9\"]\n",
            key(&name)
        );
        // gRPC health checks run over HTTP/2 only.
        let grpc_check = up
            .and_then(|u| u.get("health_check"))
            .and_then(|h| h.get("type"))
            .and_then(|t| t.as_str())
            == Some("grpc");
        if grpc_check {
            out.push_str("protocol = \"h2c\"\n");
        }
    }
    out
}

/// The outcome of loading one block: `Err` says what is wrong, in terms of the doc.
fn check(block: &Block, dir: &Path) -> Result<(), String> {
    let path = dir.join("gateway.toml");
    let src = match block.mode {
        Mode::Complete => block.text.clone(),
        Mode::Fragment => format!("{}{}", block.text, wrapper(&block.text)),
    };
    for (name, value) in &block.env {
        std::env::set_var(name, value);
    }
    let result = tollgate::config::load_str(&path, &src, &tollgate::plugins::builtin_registry());
    for (name, _) in &block.env {
        std::env::remove_var(name);
    }
    let errors = result.err().map(|e| in_doc(&e.to_string(), &path, block));
    match (&block.error, errors) {
        (None, None) => against_schema(&src),
        (None, Some(errors)) => Err(format!("does not load:\n{errors}")),
        (Some(want), None) => Err(format!("loads, but the marker says it fails with `{want}`")),
        (Some(want), Some(errors)) if errors.contains(want.as_str()) => Ok(()),
        (Some(want), Some(errors)) => Err(format!(
            "fails, but not with `{want}`:\n{errors}\n(the wrapper the test appended: {:?})",
            wrapper(&block.text)
        )),
    }
}

/// What the JSON Schema of gateway.toml says of a file the loader accepts.
fn against_schema(src: &str) -> Result<(), String> {
    static VALIDATOR: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let schema = tollgate::config::schema(&tollgate::plugins::builtin_registry());
        jsonschema::draft202012::new(&schema).expect("the schema compiles")
    });
    let doc: serde_json::Value = toml::from_str(src).map_err(|e| format!("not TOML: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("  {}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "loads, but the JSON Schema (`tollgate schema`) refuses it:\n{}",
            errors.join("\n")
        ))
    }
}

/// The loader's `PATH:LINE:COL: message` lines, with positions inside the block moved to the
/// doc (`docs/x.md:LINE:COL`) and positions in the wrapper said to be there.
fn in_doc(errors: &str, path: &Path, block: &Block) -> String {
    let prefix = format!("{}:", path.display());
    let block_lines = block.text.lines().count();
    errors
        .lines()
        .map(|e| {
            let Some(rest) = e.strip_prefix(&prefix) else {
                return format!("  {e}");
            };
            let mut parts = rest.splitn(3, ':');
            let (line, col, msg) = (parts.next(), parts.next(), parts.next());
            match (line.and_then(|l| l.parse::<usize>().ok()), col, msg) {
                (Some(l), Some(c), Some(m)) if l <= block_lines => {
                    format!("  {}:{}:{c}:{m}", block.file, block.line + l)
                }
                (Some(l), Some(c), Some(m)) => {
                    format!("  (line {l}:{c} of the test's wrapper after the block):{m}")
                }
                _ => format!("  {e}"),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// README.md, CONTRIBUTING.md and every .md under docs/, relative to the repo root, sorted.
fn doc_files(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let entries = std::fs::read_dir(dir).expect("read docs dir");
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                let rel = path.strip_prefix(root).expect("under the root");
                out.push(rel.display().to_string());
            }
        }
    }
    let mut out = vec!["README.md".to_owned(), "CONTRIBUTING.md".to_owned()];
    walk(&root.join("docs"), root, &mut out);
    out.sort();
    out
}

/// A directory holding the files the docs' examples name, relative to their `gateway.toml`:
/// a certificate and its key, CA files, an API keys file and a JWT secret, the repo's `proto/`,
/// and a descriptor set of a small books API (`api/books.pb`, from
/// tests/fixtures/docs/books.proto). Certificates are made here, so none can expire.
/// A CRL revoking nothing, for the examples' `client_crl_files` (its issuer is a CA of its own:
/// the examples' files are checked for their form, not for who signed them).
fn empty_crl() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca, key);
    rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2026, 1, 1),
        next_update: rcgen::date_time_ymd(2036, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .expect("crl")
    .pem()
    .expect("crl pem")
}

fn example_files(root: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for sub in ["certs", "secrets", "api"] {
        std::fs::create_dir(d.join(sub)).expect("mkdir");
    }
    let cert = rcgen::generate_simple_self_signed(vec!["gateway.example.com".to_owned()])
        .expect("certificate");
    let pem = cert.cert.pem();
    let write = |rel: &str, text: &[u8]| std::fs::write(d.join(rel), text).expect("write");
    write("certs/gateway.pem", pem.as_bytes());
    write(
        "certs/gateway.key",
        cert.signing_key.serialize_pem().as_bytes(),
    );
    write("certs/internal-ca.pem", pem.as_bytes());
    write("certs/partner-ca.pem", pem.as_bytes());
    write("certs/partner-ca.crl", empty_crl().as_bytes());
    let client = rcgen::generate_simple_self_signed(vec!["tollgate.example.com".to_owned()])
        .expect("client certificate");
    write("certs/tollgate-client.pem", client.cert.pem().as_bytes());
    write(
        "certs/tollgate-client.key",
        client.signing_key.serialize_pem().as_bytes(),
    );
    // `printf %s acme-batch-key | sha256sum`
    write(
        "secrets/api-keys.txt",
        b"# NAME SHA256HEX\nacme-batch 7b6b0c24d94b44a7ebd261db3260127e523d53e69a25ee4ce68a9edc3c750362\n",
    );
    write("secrets/billing-jwt.key", &[b'k'; 64]);
    std::os::unix::fs::symlink(root.join("proto"), d.join("proto")).expect("symlink proto");
    let books = protox::compile(
        ["books.proto"],
        [root.join("tests/fixtures/docs"), root.join("proto")],
    )
    .expect("compile tests/fixtures/docs/books.proto");
    write("api/books.pb", &prost::Message::encode_to_vec(&books));
    dir
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_toml_block_of_the_docs_loads_as_its_marker_says() {
    let root = repo_root();
    let files = example_files(&root);
    let mut failures = Vec::new();
    let (mut loaded, mut skipped) = (0, 0);
    for doc in doc_files(&root) {
        let markdown = std::fs::read_to_string(root.join(&doc)).expect("read doc");
        let blocks = match blocks(&doc, &markdown) {
            Ok(b) => b,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        for block in blocks {
            if block.skip.is_some() {
                skipped += 1;
                continue;
            }
            loaded += 1;
            if let Err(e) = check(&block, files.path()) {
                failures.push(format!("{}:{}: {e}", block.file, block.line));
            }
        }
    }
    eprintln!("docs: {loaded} toml blocks loaded, {skipped} skipped");
    assert!(loaded > 0, "no toml block found under docs/");
    assert!(
        failures.is_empty(),
        "{} doc block(s) disagree with the config loader:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Every `docs/....md` path that `text` names.
fn doc_paths(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("docs/") {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_-./".contains(c)))
            .unwrap_or(tail.len());
        let path = tail[..len].trim_end_matches('.');
        // `foo-docs/x.md` is not a path into docs/.
        let starts_a_path = !rest[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '-');
        if starts_a_path && path.ends_with(".md") {
            out.push(path);
        }
        rest = &tail[len.max(1)..];
    }
    out
}

#[test]
fn every_doc_the_code_and_the_deploy_files_name_exists() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = repo_root();
    let mut files = Vec::new();
    for dir in ["src", "plugins", "tests", "benches", "examples"] {
        walk(&root.join(dir), &mut files);
    }
    for f in [
        "Dockerfile",
        "docker-compose.yml",
        "gateway.toml",
        "deploy/gateway.compose.toml",
    ] {
        files.push(root.join(f));
    }
    // This file's own examples name docs that do not exist.
    files.retain(|f| !f.ends_with("tests/docs.rs"));
    let mut missing = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        for path in doc_paths(&text) {
            if !root.join(path).is_file() {
                missing.push(format!("{}: {path}", file.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "links to docs that do not exist:\n{}",
        missing.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The checker itself
// ---------------------------------------------------------------------------------------------

#[test]
fn doc_paths_are_found_in_text() {
    assert_eq!(
        doc_paths("see docs/grpc.md. Or (docs/operations/admin-reload-upgrade.md), my-docs/x.md"),
        ["docs/grpc.md", "docs/operations/admin-reload-upgrade.md"]
    );
}

#[test]
fn markers_fences_and_modes_are_read() {
    let md = "text\n\
              ```toml\n[[listeners]]\naddress = \"127.0.0.1:1\"\n```\n\
              <!-- docs-test: complete, error \"no `[[listeners]]`\" -->\n\
              ```toml\n[server]\n```\n\
              ````markdown\n```toml\nnot = toml = at all\n```\n````\n\
              <!-- docs-test: skip \"Cargo.toml\", env \"A=b=c\" -->\n\
              ```toml\n[package]\n```\n";
    let b = blocks("x.md", md).expect("blocks");
    assert_eq!(b.len(), 3, "{b:?}");
    assert_eq!((b[0].line, b[0].mode), (2, Mode::Complete));
    assert_eq!((b[1].line, b[1].mode), (7, Mode::Complete));
    assert_eq!(b[1].error.as_deref(), Some("no `[[listeners]]`"));
    assert_eq!(b[2].skip.as_deref(), Some("Cargo.toml"));
    assert_eq!(b[2].env, [("A".to_owned(), "b=c".to_owned())]);
}

#[test]
fn bad_markers_are_errors() {
    for (md, want) in [
        (
            "<!-- docs-test: skip -->\n```toml\n```\n",
            "unknown docs-test item `skip`",
        ),
        (
            "<!-- docs-test: skip \" \" -->\n```toml\n```\n",
            "unknown docs-test item",
        ),
        ("<!-- docs-test: fragmnet -->\n```toml\n```\n", "`fragmnet`"),
        (
            "<!-- docs-test: fragment -->\n\n```toml\n```\n",
            "right before",
        ),
        (
            "<!-- docs-test: error \"x -->\n```toml\n```\n",
            "unclosed quote",
        ),
    ] {
        let err = blocks("x.md", md).expect_err(md);
        assert!(err.contains(want), "{md}: {err}");
    }
}

#[test]
fn a_fragment_gets_the_tables_it_refers_to() {
    let w = wrapper(
        "[routes.api.plugins.rate-limit]\nlimits = []\n\n[routes.health]\nexact = \"/h\"\nupstream = \"users\"\n\n[upstreams.greeter.health_check]\ntype = \"grpc\"\n",
    );
    assert!(w.contains("[[listeners]]"), "{w}");
    assert!(
        w.contains("[routes.api]\nprefix = \"/docs-test-0\"\nupstream = \"docs-test\""),
        "{w}"
    );
    assert!(!w.contains("[routes.health]"), "{w}");
    assert!(w.contains("[upstreams.users]\ntargets"), "{w}");
    assert!(w.contains("[upstreams.docs-test]\ntargets"), "{w}");
    assert!(
        w.contains("[upstreams.greeter]\ntargets = [\"127.0.0.1:9\"]\nprotocol = \"h2c\""),
        "{w}"
    );
    // The route of a publish table sends nothing to an upstream.
    let w = wrapper("[routes.in.publish]\nbroker = \"b\"\nsubject = \"in\"\n");
    assert!(
        w.contains("[routes.in]\nprefix = \"/docs-test-0\"\n"),
        "{w}"
    );
    assert!(!w.contains("upstream"), "{w}");
    // A complete upstream, or one the fragment opens itself, is left alone.
    let w = wrapper("[upstreams.a]\ntargets = [\"h:1\"]\n[upstreams.b]\nretry = {}\n");
    assert!(
        !w.contains("[upstreams.a]") && !w.contains("[upstreams.b]"),
        "{w}"
    );
}

#[test]
fn a_drifted_block_is_reported_at_its_doc_line() {
    let root = repo_root();
    let files = example_files(&root);
    let md = "intro\n\n```toml\n[routes.api]\nprefix = \"/api\"\nupstream = \"svc\"\nstrip_prefx = true\n```\n";
    let b = blocks("docs/x.md", md).expect("blocks");
    let err = check(&b[0], files.path()).expect_err("an unknown key must fail");
    assert!(
        err.contains("docs/x.md:7:1: unknown field `strip_prefx`"),
        "{err}"
    );
}
