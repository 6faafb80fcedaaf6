//! `tollgate check -c FILE`: every mistake in a config file is reported on stderr as
//! `FILE:LINE:COL: message` with exit code 1; a valid file prints `FILE: ok` and exits 0.
//!
//! These tests prove the command's contract end to end (exit codes, which stream, the line
//! format, escaping). What each mistake's message says and where it points is tested next to
//! the validation of its section, through `config::load_str` (src/config/validate/).
//!
//! Every config below starts right after `r#"`, so its first line is line 1 of the file and the
//! line numbers in the assertions can be counted in the source.

use std::path::Path;
use std::process::Command;

const FILE_NAME: &str = "gateway.toml";

/// Runs `tollgate check -c <tmp>/gateway.toml` with `toml` as the file's content.
///
/// Returns the exit code and everything the command printed (stdout, then stderr). Checks the
/// output contract on the way: on success stderr is empty and stdout is `FILE: ok`; on failure
/// stdout is empty and every line of stderr starts with `FILE:LINE:COL: ` where FILE is the path
/// given on the command line.
///
/// A config without `[[listeners]]` is itself an error, so one is appended at the end (leaving
/// every line number of `toml` as written); `check_exact` writes the text untouched.
fn check(toml: &str) -> (i32, String) {
    if toml.contains("[[listeners]]") {
        return check_exact(toml);
    }
    check_exact(&format!(
        "{toml}\n[[listeners]]\naddress = \"127.0.0.1:18080\"\n"
    ))
}

fn check_exact(toml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    std::fs::write(&path, toml).unwrap();
    run_check(&path)
}

fn run_check(path: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check")
        .arg("-c")
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let code = out.status.code().expect("tollgate was killed by a signal");
    let prefix = format!("{}:", path.display());
    match code {
        0 => {
            assert_eq!(stderr, "", "a valid config must print nothing on stderr");
            assert_eq!(stdout.trim_end(), format!("{}: ok", path.display()));
        }
        1 => {
            assert_eq!(stdout, "", "an invalid config must print nothing on stdout");
            assert!(!stderr.trim().is_empty(), "exit 1 without any error");
            for line in stderr.lines() {
                let rest = line
                    .strip_prefix(&prefix)
                    .unwrap_or_else(|| panic!("error without the file path {prefix}: {line}"));
                let mut parts = rest.splitn(3, ':');
                let (l, c) = (parts.next().unwrap(), parts.next().unwrap_or(""));
                assert!(
                    l.parse::<usize>().is_ok_and(|n| n > 0)
                        && c.parse::<usize>().is_ok_and(|n| n > 0)
                        && parts.next().is_some_and(|m| m.starts_with(' ')),
                    "error not in FILE:LINE:COL: form: {line}"
                );
            }
        }
        other => panic!("unexpected exit code {other}\nstdout: {stdout}\nstderr: {stderr}"),
    }
    (code, format!("{stdout}{stderr}"))
}

/// The error lines of an output (all of them start with the file path, see `check`).
fn errors(out: &str) -> Vec<&str> {
    out.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// Asserts that one error is reported at `line` (and `col`, when given) with `fragment` in it.
#[track_caller]
fn assert_reported(out: &str, line: usize, col: Option<usize>, fragment: &str) {
    let position = match col {
        Some(col) => format!("{FILE_NAME}:{line}:{col}: "),
        None => format!("{FILE_NAME}:{line}:"),
    };
    assert!(
        errors(out)
            .iter()
            .any(|e| e.contains(&position) && e.contains(fragment)),
        "expected an error at {position} containing {fragment:?}, got:\n{out}"
    );
}

/// Asserts exit code 1 and exactly one error, at `line:col`, containing `fragment`.
#[track_caller]
fn assert_single_error(toml: &str, line: usize, col: usize, fragment: &str) {
    let (code, out) = check(toml);
    assert_eq!(code, 1, "expected exit code 1, got {code}:\n{out}");
    assert_reported(&out, line, Some(col), fragment);
    assert_eq!(errors(&out).len(), 1, "expected exactly one error:\n{out}");
}

// ---------------------------------------------------------------------------------------------
// Invalid files: exit code 1, every error on stderr as FILE:LINE:COL: message
// ---------------------------------------------------------------------------------------------

#[test]
fn toml_syntax_error_is_reported_at_the_broken_table_header() {
    assert_single_error(
        r#"[log]
level = "info"
[server
threads = 2
"#,
        3,
        8,
        "unclosed table",
    );
}

#[test]
fn several_mistakes_are_all_reported_in_file_order() {
    let (code, out) = check(
        r#"[server]
trusted_proxies = ["nope"]

[[listeners]]
address = "0.0.0.0"

[upstreams.u]
targets = ["127.0.0.1:3000"]
connect_timeout = "5s"

[routes.a]
prefix = "/"
upstream = "missing"

[routes.b]
template = "/x/{1}"
upstream = "u"

[routes.c]
prefix = "/c"
upstream = "u"

[routes.c.plugins.cors]
alow_origins = ["*"]
"#,
    );
    assert_eq!(code, 1, "{out}");
    assert_reported(&out, 2, Some(20), "invalid CIDR or IP address `nope`");
    assert_reported(&out, 5, Some(11), "invalid listener address `0.0.0.0`");
    assert_reported(&out, 13, Some(12), "upstream `missing` is not defined");
    assert_reported(&out, 16, Some(12), "parameter name `1`");
    assert_reported(&out, 24, Some(1), "unknown field `alow_origins`");
    let lines: Vec<usize> = errors(&out)
        .iter()
        .map(|e| {
            let rest = &e[e.find(&format!("{FILE_NAME}:")).unwrap() + FILE_NAME.len() + 1..];
            rest.split(':').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(lines, [2, 5, 13, 16, 24], "{out}");
}

/// Values echoed in errors are escaped, so a value cannot end its error line and forge another
/// `FILE:LINE:COL:` line, nor send escape sequences to the terminal (`run_check` also asserts
/// that every output line has the error form).
#[test]
fn control_characters_in_echoed_values_are_escaped() {
    let (code, out) = check(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.r]
host = "a\r\ngateway.toml:1:1: all good \u001b[2J"
prefix = "/"
upstream = "u"

[routes."a\nb"]
exact = "/x"
upstream = "u"

[routes."a\u001bb"]
exact = "/x"
upstream = "u"
"#,
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(errors(&out).len(), 2, "{out}");
    assert_reported(
        &out,
        5,
        Some(8),
        r"route `r`: invalid host `a\r\ngateway.toml:1:1: all good \x1b[2J`",
    );
    assert_reported(
        &out,
        14,
        Some(9),
        r"route `a\x1bb` conflicts with route `a\nb`",
    );
    assert!(!out.contains('\u{1b}') && !out.contains('\r'));
    // Messages of the toml crate and serde too.
    let (_, out) = check("[server]\n\"x\\u0085y\" = 1\n");
    assert_reported(&out, 2, Some(1), r"unknown field `x\u{85}y`");
    assert!(!out.contains('\u{85}'));
}

#[test]
fn missing_config_file_is_reported_at_line_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let (code, out) = run_check(&path);
    assert_eq!(code, 1, "{out}");
    assert_reported(&out, 1, Some(1), "cannot read the config file");
}

#[test]
fn config_without_listeners_is_reported() {
    let out = check_exact(
        r#"[upstreams.a]
targets = ["127.0.0.1:1"]
"#,
    );
    assert_eq!(out.0, 1);
    assert!(out.1.contains("no `[[listeners]]`"), "{}", out.1);
}

// ---------------------------------------------------------------------------------------------
// Valid files: exit code 0, `FILE: ok` on stdout
// ---------------------------------------------------------------------------------------------

#[test]
fn the_repository_gateway_toml_is_valid() {
    // Checked in place: its `.proto` paths are relative to the repository.
    let repo_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let (code, out) = run_check(&repo_config);
    assert_eq!(code, 0, "{out}");
    assert!(out.trim_end().ends_with("gateway.toml: ok"), "{out}");
}

#[test]
fn a_minimal_valid_config_is_ok() {
    let (code, out) = check(
        r#"[[listeners]]
address = "127.0.0.1:8080"

[upstreams.u]
targets = ["127.0.0.1:3000", { address = "127.0.0.1:3001", weight = 3 }]
connect_timeout = "250ms"

[routes.a]
template = "/users/{id}"
rewrite = "/v1/users/{id}"
host = "*.example.com"
upstream = "u"

[routes.a.plugins.ip-restriction]
allow = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
"#,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": ok"), "{out}");
}

#[test]
fn version_flag_prints_the_package_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim(),
        format!("tollgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_plugin_that_registers_itself_from_its_folder_is_in_the_binary() {
    // No code of the gateway names `require-json-field`: build.rs registers it because its
    // folder's Cargo.toml says so. The built binary knows it, and builds it from the config.
    let valid = r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/"
upstream = "u"

[routes.a.plugins.require-json-field]
fields = ["name"]
"#;
    let (code, out) = check(valid);
    assert_eq!(code, 0, "{out}");
    assert_single_error(
        &valid.replace(r#"["name"]"#, "[]"),
        8,
        1,
        "plugin `require-json-field`: `fields` must name at least one field",
    );
}

/// `tollgate check -c -` with `input` on standard input, run in `dir`.
fn check_stdin(input: &str, dir: &Path) -> (i32, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "-c", "-"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tollgate check");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write the config");
    let out = child.wait_with_output().expect("tollgate check");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_config_on_standard_input_is_checked_with_paths_from_the_working_directory() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("gateway.toml")).expect("gateway.toml");
    let (code, out) = check_stdin(&text, repo);
    assert_eq!((code, out.trim()), (0, "<stdin>: ok"));
    // From elsewhere its protos are not found: they are relative to where it is checked.
    let (code, out) = check_stdin(&text, &std::env::temp_dir());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("<stdin>:"), "{out}");
    let (code, out) = check_stdin("[routes.x]\nexact = \"/x\"\nupstream = \"nope\"\n", repo);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("<stdin>:3:12: route `x`: upstream `nope` is not defined"),
        "{out}"
    );
}

#[test]
fn the_gateway_does_not_run_from_standard_input() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["-c", "-"])
        .output()
        .expect("run tollgate");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is for `tollgate check`"), "{err}");
}

/// `tollgate check --print`, with the config's text on standard input when `stdin` is given.
fn check_print(config: &Path, stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--print", "-c"])
        .arg(if stdin.is_some() {
            Path::new("-")
        } else {
            config
        })
        .current_dir(config.parent().unwrap_or(Path::new(".")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tollgate check --print");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("write the config");
    drop(input);
    let out = child.wait_with_output().expect("tollgate check --print");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn print_shows_the_effective_config_which_checks_again() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, printed, err) = check_print(&repo.join("gateway.toml"), None);
    assert_eq!((code, err.as_str()), (0, ""), "{printed}");
    // Defaults the file leaves out are shown, and whole sections that apply when absent.
    for line in [
        "max_uri_bytes = 8192",
        "[admin]",
        "idle_timeout = \"1m\"",
        "heartbeat = \"15s\"",
    ] {
        assert!(printed.contains(line), "{line} not in:\n{printed}");
    }
    // The demo key's hash is not shown.
    let file = std::fs::read_to_string(repo.join("gateway.toml")).expect("gateway.toml");
    let hash = file
        .lines()
        .find_map(|l| l.split_once("key_sha256 = \"").map(|(_, rest)| rest))
        .and_then(|rest| rest.split('"').next())
        .expect("gateway.toml has a key-auth consumer");
    assert!(!printed.contains(hash), "{printed}");
    assert!(printed.contains("key_sha256 = \"<redacted>\""), "{printed}");
    // The same from standard input; and the printed config passes `check` itself once its
    // redacted credential is a valid one again.
    let (code, again, _) = check_print(&repo.join("gateway.toml"), Some(&file));
    assert_eq!(code, 0);
    assert_eq!(
        again.lines().skip(1).collect::<Vec<_>>(),
        printed.lines().skip(1).collect::<Vec<_>>(),
        "only the header names a different source"
    );
    let loadable = printed.replace("<redacted>", &"0".repeat(64));
    let (code, out) = check_stdin(&loadable, repo);
    assert_eq!((code, out.trim()), (0, "<stdin>: ok"));
}

#[test]
fn print_of_a_broken_config_prints_the_errors_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(FILE_NAME);
    std::fs::write(
        &path,
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n[routes.x]\nexact = \"/x\"\nupstream = \"nope\"\n",
    )
    .expect("write");
    let (code, out, err) = check_print(&path, None);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.contains("gateway.toml:5:12: route `x`: upstream `nope` is not defined"),
        "{err}"
    );
}
