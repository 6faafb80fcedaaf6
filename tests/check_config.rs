//! `tollgate check -c FILE`: every mistake in a config file is reported on stderr as
//! `FILE:LINE:COL: message` with exit code 1; a valid file prints `FILE: ok` and exits 0.
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
// Parsing and the shape of the file
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
fn duplicate_key_is_reported_as_a_syntax_error_on_the_second_occurrence() {
    assert_single_error(
        r#"[server]
threads = 1
threads = 2
"#,
        3,
        1,
        "duplicate key",
    );
}

#[test]
fn unknown_top_level_key_is_reported_with_line_and_column() {
    assert_single_error(
        r#"[server]
threads = 2

[bogus]
x = 1
"#,
        4,
        2,
        "unknown field `bogus`, expected one of `server`",
    );
}

#[test]
fn unknown_key_in_route_is_reported_with_line_and_column() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.r]
prefix = "/"
upstream = "u"
upsteam = "u"
"#,
        7,
        1,
        "unknown field `upsteam`, expected one of `exact`, `prefix`",
    );
}

#[test]
fn unknown_key_in_inline_route_table_is_reported_at_the_key() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes]
a = { prefix = "/", upstream = "u", prfix = "/x" }
"#,
        5,
        37,
        "unknown field `prfix`",
    );
}

#[test]
fn unknown_key_in_listener_is_reported_with_line_and_column() {
    assert_single_error(
        r#"[[listeners]]
address = "127.0.0.1:8080"
h2 = true
"#,
        3,
        1,
        "unknown field `h2`, expected one of `name`, `address`, `h2c`, `tls`",
    );
}

#[test]
fn unknown_log_format_is_reported_at_the_value() {
    assert_single_error(
        r#"[log]
format = "xml"
"#,
        2,
        10,
        "unknown variant `xml`, expected `text` or `json`",
    );
}

#[test]
fn targets_given_as_a_string_instead_of_a_list_is_a_type_error() {
    assert_single_error(
        r#"[upstreams.u]
targets = "127.0.0.1:3000"
"#,
        2,
        11,
        "expected a sequence",
    );
}

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_duration_is_reported_at_the_value() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]
connect_timeout = "5 parsecs"
"#,
        3,
        19,
        "invalid duration `5 parsecs`",
    );
}

#[test]
fn listener_address_that_is_not_ip_and_port_is_reported() {
    assert_single_error(
        r#"[[listeners]]
address = "localhost:8080"
"#,
        2,
        11,
        "invalid listener address `localhost:8080`: expected IP:PORT",
    );
}

#[test]
fn listener_address_used_twice_is_reported_on_the_second_listener() {
    assert_single_error(
        r#"[[listeners]]
address = "127.0.0.1:8080"

[[listeners]]
address = "127.0.0.1:8080"
"#,
        5,
        11,
        "listener address 127.0.0.1:8080 is already used by listener #1",
    );
}

#[test]
fn bad_admin_address_is_reported() {
    assert_single_error(
        r#"[admin]
address = "nowhere"
"#,
        2,
        11,
        "invalid admin address `nowhere`",
    );
}

#[test]
fn bad_cidr_in_trusted_proxies_is_reported_at_the_entry() {
    assert_single_error(
        r#"[server]
trusted_proxies = ["127.0.0.1/32", "10.0.0.0/33"]
"#,
        2,
        36,
        "invalid CIDR or IP address `10.0.0.0/33`",
    );
}

#[test]
fn zero_threads_is_reported() {
    assert_single_error(
        r#"[server]
threads = 0
"#,
        2,
        11,
        "`threads` must be at least 1",
    );
}

#[test]
fn target_without_port_is_reported_at_the_target() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000", "127.0.0.1"]
"#,
        2,
        30,
        "target `127.0.0.1` must be HOST:PORT",
    );
}

#[test]
fn target_weight_out_of_range_is_reported_at_the_target() {
    let (code, out) = check(
        r#"[upstreams.u]
targets = [
  { address = "127.0.0.1:3000", weight = 0 },
  { address = "127.0.0.1:3001", weight = 1001 },
  { address = "127.0.0.1:3002", weight = 1000 },
]
"#,
    );
    assert_eq!(code, 1, "{out}");
    assert_reported(&out, 3, Some(3), "weight must be between 1 and 1000, got 0");
    assert_reported(
        &out,
        4,
        Some(3),
        "weight must be between 1 and 1000, got 1001",
    );
    assert_eq!(errors(&out).len(), 2, "{out}");
}

#[test]
fn upstream_without_targets_is_reported() {
    assert_single_error(
        r#"[upstreams.empty]
targets = []
"#,
        2,
        11,
        "upstream `empty` has no targets",
    );
}

#[test]
fn tls_on_an_h2c_upstream_is_reported() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]
protocol = "h2c"
tls = { verify = false }
"#,
        4,
        7,
        "`tls` cannot be used with protocol \"h2c\"",
    );
}

#[test]
fn missing_tls_certificate_and_key_files_on_a_listener_are_reported() {
    let (code, out) = check(
        r#"[[listeners]]
address = "127.0.0.1:8443"
tls = { cert_file = "missing-cert.pem", key_file = "missing-key.pem" }
"#,
    );
    assert_eq!(code, 1, "{out}");
    assert_reported(&out, 3, Some(21), "certificate file `");
    assert_reported(&out, 3, Some(21), "missing-cert.pem` does not exist");
    assert_reported(&out, 3, Some(52), "private key file `");
    assert_reported(&out, 3, Some(52), "missing-key.pem` does not exist");
    assert_eq!(errors(&out).len(), 2, "{out}");
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

#[test]
fn route_with_undefined_upstream_is_reported_at_the_reference() {
    assert_single_error(
        r#"[upstreams.users]
targets = ["127.0.0.1:3000"]

[routes.r]
prefix = "/"
upstream = "user"
"#,
        6,
        12,
        "route `r`: upstream `user` is not defined",
    );
}

#[test]
fn duplicate_exact_routes_are_a_conflict() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
exact = "/health"
upstream = "u"

[routes.b]
exact = "/health"
upstream = "u"
"#,
        9,
        9,
        "route `b` conflicts with route `a`: both match any method on /health with equal specificity",
    );
}

#[test]
fn identical_prefixes_are_a_conflict() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/api"
upstream = "u"

[routes.b]
prefix = "/api"
upstream = "u"
"#,
        9,
        10,
        "route `b` conflicts with route `a`: both match any method on prefix /api",
    );
}

/// A thousand copies of one route are half a million conflicting pairs: the first twenty are
/// described, then one line counts the rest (it was 499,500 lines, 240 MB and 25 s).
#[test]
fn a_thousand_identical_routes_report_twenty_conflicts_and_count_the_rest() {
    let mut toml = String::from("[upstreams.u]\ntargets = [\"127.0.0.1:3000\"]\n");
    for n in 0..1000 {
        toml.push_str(&format!(
            "[routes.r{n:04}]\nprefix = \"/api\"\nupstream = \"u\"\n"
        ));
    }
    let (code, out) = check(&toml);
    assert_eq!(code, 1, "{out}");
    let errors = errors(&out);
    assert_eq!(errors.len(), 21, "{out}");
    // Route r0001 is on lines 6-8 (prefix on line 7), r0000 on lines 3-5.
    assert_reported(
        &out,
        7,
        Some(10),
        "route `r0001` conflicts with route `r0000`: both match any method on prefix /api",
    );
    assert!(
        errors[20].ends_with(
            ": 499480 more conflicting pairs of routes are not listed, starting with route \
             `r0006` and route `r0005`; only the first 20 are shown"
        ),
        "{out}"
    );
    // The summary closes the report, at the first unlisted pair's later route (r0006, line 22).
    assert!(
        errors[20].contains(&format!("{FILE_NAME}:22:10: ")),
        "{out}"
    );
}

#[test]
fn identical_prefixes_with_disjoint_methods_are_not_a_conflict() {
    let (code, out) = check(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/api"
methods = ["GET"]
upstream = "u"

[routes.b]
prefix = "/api"
methods = ["POST"]
upstream = "u"
"#,
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn templates_differing_only_in_parameter_names_are_a_conflict() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
template = "/users/{id}"
methods = ["GET", "PUT"]
upstream = "u"

[routes.b]
template = "/users/{name}"
methods = ["PUT"]
upstream = "u"
"#,
        10,
        12,
        "route `b` conflicts with route `a`: both match PUT /users/{name}",
    );
}

#[test]
fn template_with_bad_parameter_name_is_reported() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
template = "/users/{1d}"
upstream = "u"
"#,
        5,
        12,
        "parameter name `1d` must match [A-Za-z_][A-Za-z0-9_]*",
    );
}

#[test]
fn template_segment_mixing_text_and_braces_is_reported() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
template = "/users/x{id}"
upstream = "u"
"#,
        5,
        12,
        "segment `x{id}` mixes text and braces",
    );
}

#[test]
fn rewrite_using_a_parameter_the_template_lacks_is_reported() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
template = "/users/{id}"
rewrite = "/u/{uid}"
upstream = "u"
"#,
        6,
        11,
        "`{uid}` is not a parameter of the route's template",
    );
}

#[test]
fn path_not_in_normal_form_is_reported() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/a/../b"
upstream = "u"
"#,
        5,
        10,
        "prefix path `/a/../b` is not in normal form (write `/b`)",
    );
}

#[test]
fn invalid_host_pattern_is_reported_at_the_host() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/"
host = "api.example.com:8080"
upstream = "u"
"#,
        6,
        8,
        "route `a`: invalid host `api.example.com:8080`",
    );
}

#[test]
fn route_with_exact_and_prefix_is_reported_at_the_second_matcher() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
exact = "/x"
prefix = "/x"
upstream = "u"
"#,
        6,
        10,
        "route `a`: `prefix` cannot be combined with another path match",
    );
}

#[test]
fn route_without_path_matcher_is_reported_at_the_route() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
upstream = "u"
"#,
        4,
        1,
        "route `a`: set one of `exact`, `prefix` or `template`",
    );
}

#[test]
fn strip_prefix_together_with_rewrite_is_reported() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/api"
strip_prefix = true
rewrite = "/v1"
upstream = "u"
"#,
        6,
        16,
        "`strip_prefix` and `rewrite` cannot both be set",
    );
}

// ---------------------------------------------------------------------------------------------
// Plugins
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_route_plugin_name_is_reported_at_the_plugin_key() {
    let toml = r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/"
upstream = "u"

[routes.a.plugins.rate-limiter]
rps = 10
"#;
    assert_single_error(
        toml,
        8,
        19,
        "unknown plugin `rate-limiter` (known plugins: body-limit, cors, ",
    );
    // The list is the registry's, in name order; a new plugin adds to it without a change here.
    let (_, out) = check(toml);
    assert!(out.contains(", rate-limit, "), "{out}");
}

#[test]
fn unknown_global_plugin_name_is_reported_at_the_plugin_key() {
    assert_single_error(
        r#"[plugins.request-id]

[plugins.nope]
x = 1
"#,
        3,
        10,
        "unknown plugin `nope`",
    );
}

#[test]
fn unknown_key_in_plugin_config_is_reported_with_line_and_column() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/"
upstream = "u"

[routes.a.plugins.cors]
alow_origins = ["https://app.example.com"]
"#,
        9,
        1,
        "plugin `cors`: unknown field `alow_origins`, expected one of `allow_origins`",
    );
}

#[test]
fn invalid_cidr_in_ip_restriction_is_reported_at_the_plugin_table() {
    // The factory validates the whole config; its errors carry the position of the plugin's table.
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/"
upstream = "u"

[routes.a.plugins.ip-restriction]
allow = ["10.0.0.0/8", "300.1.2.3"]
"#,
        8,
        1,
        "plugin `ip-restriction`: allow: `300.1.2.3` is not an IP address or CIDR block",
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

#[test]
fn bad_size_in_body_limit_is_reported_at_the_value() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/"
upstream = "u"
plugins.body-limit.max_bytes = "lots"
"#,
        7,
        32,
        "plugin `body-limit`: invalid size `lots`",
    );
}

#[test]
fn disabling_a_plugin_that_is_not_global_is_reported() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/"
upstream = "u"
disable_plugins = ["cors"]
"#,
        7,
        20,
        "cannot disable `cors`: it is not a global plugin",
    );
}

// ---------------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------------

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
fn columns_count_characters_not_bytes() {
    // `é` is two bytes; the second entry starts at character 25 (byte 26).
    let (code, out) = check("[server]\ntrusted_proxies = [\"é\", \"x\"]\n");
    assert_eq!(code, 1, "{out}");
    assert_reported(&out, 2, Some(20), "`é`");
    assert_reported(&out, 2, Some(25), "`x`");
}

#[test]
fn crlf_line_endings_keep_lines_and_columns() {
    let (code, out) = check("[log]\r\nlevel = \"info\"\r\n\r\n[server]\r\nthreads = 0\r\n");
    assert_eq!(code, 1, "{out}");
    assert_reported(&out, 5, Some(11), "`threads` must be at least 1");
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

// ---------------------------------------------------------------------------------------------
// Former defects, fixed: kept so they stay fixed.
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_methods_list_is_reported_once_at_the_methods_key() {
    let (code, out) = check(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/"
methods = []
upstream = "u"
"#,
    );
    assert_eq!(code, 1, "{out}");
    assert_reported(&out, 6, None, "`methods` must not be empty");
    assert_eq!(errors(&out).len(), 1, "{out}");
}

#[test]
fn invalid_method_is_reported_once() {
    assert_single_error(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/"
methods = ["GE T"]
upstream = "u"
"#,
        6,
        12,
        "route `a`: invalid method `GE T`",
    );
}

#[test]
fn unknown_key_in_weighted_target_is_named_in_the_error() {
    let (code, out) = check(
        r#"[upstreams.u]
targets = [{ address = "127.0.0.1:3000", wieght = 2 }]
"#,
    );
    assert_eq!(code, 1, "{out}");
    assert_reported(&out, 2, None, "unknown field `wieght`");
    assert!(!out.contains("untagged enum"), "{out}");
}

#[test]
fn template_error_names_the_template_once() {
    let (code, out) = check(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
template = "/a/{1}"
upstream = "u"
"#,
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(out.matches("template `/a/{1}`").count(), 1, "{out}");
}

#[test]
fn unknown_keys_in_two_routes_are_both_reported() {
    let (code, out) = check(
        r#"[upstreams.u]
targets = ["127.0.0.1:3000"]

[routes.a]
prefix = "/a"
upstream = "u"
upsteam = "u"

[routes.b]
prefix = "/b"
upstream = "u"
bogus = 1
"#,
    );
    assert_eq!(code, 1, "{out}");
    assert_reported(&out, 7, Some(1), "unknown field `upsteam`");
    assert_reported(&out, 12, Some(1), "unknown field `bogus`");
    assert_eq!(errors(&out).len(), 2, "{out}");
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

#[test]
fn invalid_log_level_is_reported_at_the_value() {
    let out = check(
        r#"[[listeners]]
address = "127.0.0.1:8080"
[log]
level = "loud=[["
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(&out.1, 4, Some(9), "invalid log level");
}

#[test]
fn admin_address_clashing_with_a_listener_is_reported() {
    let out = check(
        r#"[[listeners]]
address = "127.0.0.1:8080"
[admin]
address = "127.0.0.1:8080"
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(&out.1, 4, Some(11), "already used by listener");
}

#[test]
fn route_plugins_that_are_not_a_table_are_reported() {
    let out = check(
        r#"[[listeners]]
address = "127.0.0.1:8080"
[upstreams.a]
targets = ["127.0.0.1:1"]
[routes.r]
prefix = "/"
upstream = "a"
plugins = "cors"
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(&out.1, 8, Some(11), "invalid type");
}

// ---------------------------------------------------------------------------------------------
// Load balancing, health checks, retries, discovery
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_balancing_algorithm_is_reported_at_the_value() {
    let out = check(
        r#"[upstreams.a]
targets = ["127.0.0.1:1"]
balance = "fastest"
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(&out.1, 3, Some(11), "unknown variant `fastest`");
}

#[test]
fn empty_targets_list_is_reported() {
    let out = check(
        r#"[upstreams.a]
targets = []
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(&out.1, 2, Some(11), "has no targets");
}

#[test]
fn upstream_without_targets_or_discovery_is_reported() {
    let out = check(
        r#"[upstreams.a]
protocol = "http1"
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(&out.1, 1, None, "needs `targets` or `discovery`");
}

#[test]
fn zero_and_negative_weights_are_reported() {
    let out = check(
        r#"[upstreams.a]
targets = [{ address = "127.0.0.1:1", weight = 0 }, { address = "127.0.0.1:2", weight = -3 }]
"#,
    );
    assert_eq!(out.0, 1);
    assert!(out.1.contains("got 0"), "{}", out.1);
    assert!(out.1.contains("got -3"), "{}", out.1);
}

#[test]
fn zero_health_threshold_is_reported_at_the_value() {
    let out = check(
        r#"[upstreams.a]
targets = ["127.0.0.1:1"]
[upstreams.a.health_check]
healthy_threshold = 0
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(
        &out.1,
        4,
        Some(21),
        "`healthy_threshold` must be at least 1",
    );
}

#[test]
fn health_check_interval_below_100ms_is_reported() {
    let out = check(
        r#"[upstreams.a]
targets = ["127.0.0.1:1"]
[upstreams.a.health_check]
interval = "20ms"
timeout = "10ms"
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(&out.1, 4, Some(12), "must be at least 100ms");
}

#[test]
fn unknown_health_check_type_is_reported() {
    let out = check(
        r#"[upstreams.a]
targets = ["127.0.0.1:1"]
[upstreams.a.health_check]
type = "icmp"
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(&out.1, 4, Some(8), "unknown variant `icmp`");
}

#[test]
fn bad_expected_status_range_is_reported() {
    let out = check(
        r#"[upstreams.a]
targets = ["127.0.0.1:1"]
[upstreams.a.health_check]
expected_statuses = ["200-299", "299-200"]
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(&out.1, 4, Some(33), "invalid status range `299-200`");
}

#[test]
fn unknown_retry_condition_is_reported() {
    let out = check(
        r#"[upstreams.a]
targets = ["127.0.0.1:1"]
[upstreams.a.retry]
on = ["reset", "gateway_error"]
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(
        &out.1,
        4,
        Some(16),
        "unknown retry condition `gateway_error`",
    );
}

#[test]
fn hash_on_without_ring_hash_and_bad_hash_key_are_reported() {
    let out = check(
        r#"[upstreams.a]
targets = ["127.0.0.1:1"]
hash_on = "path"
[upstreams.b]
targets = ["127.0.0.1:1"]
balance = "ring_hash"
hash_on = "moon_phase"
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(
        &out.1,
        3,
        Some(11),
        "only applies to `balance = \"ring_hash\"`",
    );
    assert_reported(&out.1, 7, Some(11), "invalid `hash_on` `moon_phase`");
}

#[test]
fn discovery_missing_keys_and_targets_with_discovery_are_reported() {
    let out = check(
        r#"[upstreams.a]
discovery = { type = "dns", name = "users.internal" }
[upstreams.b]
targets = ["127.0.0.1:1"]
discovery = { type = "consul", service = "b", address = "consul:8500" }
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(
        &out.1,
        2,
        Some(13),
        "`dns` discovery needs `name` and `port`",
    );
    assert_reported(&out.1, 5, Some(13), "not both");
    assert_reported(&out.1, 5, Some(57), "invalid Consul address `consul:8500`");
}

#[test]
fn consul_address_with_credentials_is_refused_without_quoting_them() {
    let out = check(
        r#"[upstreams.a]
discovery = { type = "consul", service = "a", address = "http://ops:s3cret@consul:8500" }
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(
        &out.1,
        2,
        Some(57),
        "Consul address `http://ops:<redacted>@consul:8500` carries credentials, which are not sent; give the ACL token as `token`",
    );
    assert!(!out.1.contains("s3cret"), "{}", out.1);
}

#[test]
fn circuit_breaker_and_outlier_limits_are_validated() {
    let out = check(
        r#"[upstreams.a]
targets = ["127.0.0.1:1"]
circuit_breaker = { max_in_flight = 0 }
outlier_detection = { max_ejection_percent = 150, consecutive_failures = 0 }
"#,
    );
    assert_eq!(out.0, 1);
    assert_reported(&out.1, 3, Some(37), "`max_in_flight` must be at least 1");
    assert_reported(
        &out.1,
        4,
        Some(46),
        "`max_ejection_percent` must be between 0 and 100",
    );
    assert_reported(
        &out.1,
        4,
        Some(74),
        "`consecutive_failures` must be at least 1",
    );
}

#[test]
fn unresolvable_host_name_target_is_not_a_config_error() {
    // It is reported in the log at startup and resolved again in the background.
    let out = check(
        r#"[upstreams.a]
targets = ["no-such-host.invalid:8080"]
"#,
    );
    assert_eq!(out.0, 0, "{}", out.1);
}
