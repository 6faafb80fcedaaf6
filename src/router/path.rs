//! Request-path normalisation, so that routing and every later phase see one spelling of a path.
//!
//! The rules are RFC 3986 §6.2.2 (case and percent-encoding normalisation) and §5.2.4 (dot
//! segments), tightened where the RFC is lenient in ways an attacker could use:
//! - `..` above the root is an error instead of being clamped, so `/../admin` is refused rather
//!   than silently becoming `/admin`;
//! - dot segments are recognised after decoding, so `%2e%2e` is `..`;
//! - `%2F` and `%5C` stay encoded: a client can never smuggle a separator past the router;
//! - repeated slashes are merged, since most upstreams treat `//` as `/` and the router must agree;
//! - a raw `\` is an error: some backends treat it as a separator, so `/api/..\admin` could
//!   climb out of a prefix the router granted.
//!
//! Anything else (including non-ASCII characters) is kept as written.

use std::borrow::Cow;
use std::fmt;

/// Why a request path was refused; each message tells the client what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/` (e.g. empty, `*`, or an absolute URI that was not split).
    NotAbsolute,
    /// A `%` is not followed by two hexadecimal digits.
    BadPercentEncoding,
    /// A `..` segment would climb above `/`.
    EscapesRoot,
    /// The path contains `%00` or a raw control character (bytes below 0x20, or 0x7F).
    ControlCharacter,
    /// The path contains a raw backslash.
    Backslash,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "path must start with `/`",
            PathError::BadPercentEncoding => {
                "path has a malformed percent-escape: `%` must be followed by two hex digits"
            }
            PathError::EscapesRoot => "path escapes the root with `..`",
            PathError::ControlCharacter => {
                "path contains a control character (raw, or encoded as `%00`)"
            }
            PathError::Backslash => "path contains a backslash (`\\`); separate segments with `/`",
        })
    }
}

impl std::error::Error for PathError {}

/// Normalises a raw request path (without query); borrows the input when it is already normal.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if scan(raw)? {
        rewrite(raw).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(raw))
    }
}

/// Validates `raw` and reports whether it needs rewriting; kept separate from `rewrite` so the
/// common, already-clean path costs one pass and no allocation.
fn scan(raw: &str) -> Result<bool, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut dirty = false;
    let mut segment_start = 1;
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (value, lower_hex) = escape_at(bytes, i)?;
                if value == 0 {
                    return Err(PathError::ControlCharacter);
                }
                dirty |= lower_hex || is_unreserved(value);
                i += 3;
                continue;
            }
            b'/' => {
                let segment = &bytes[segment_start..i];
                // An empty segment before a `/` means `//`.
                dirty |= segment.is_empty() || is_dot_segment(segment);
                segment_start = i + 1;
            }
            b if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            b'\\' => return Err(PathError::Backslash),
            _ => {}
        }
        i += 1;
    }
    dirty |= is_dot_segment(&bytes[segment_start..]);
    Ok(dirty)
}

/// Builds the normal form; only called when `scan` found something to change, so the escapes are
/// already known to be well formed (they are re-checked anyway rather than trusted).
fn rewrite(raw: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(raw.len());
    // Where each kept segment starts in `out` (at its leading `/`), so `..` can pop it.
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing_slash = false;
    let body = raw.get(1..).unwrap_or_default();
    let mut segments = body.split('/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        let start = out.len();
        out.push('/');
        push_decoded(&mut out, segment)?;
        let decoded = &out[start + 1..];
        if decoded.is_empty() || decoded == "." {
            out.truncate(start);
        } else if decoded == ".." {
            out.truncate(start);
            let parent = starts.pop().ok_or(PathError::EscapesRoot)?;
            out.truncate(parent);
        } else {
            starts.push(start);
            trailing_slash = false;
            continue;
        }
        // A removed last segment (`/a/`, `/a/.`, `/a/b/..`) leaves the path ending in a directory.
        trailing_slash = is_last;
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Appends `segment` with unreserved escapes decoded and the others upper-cased.
fn push_decoded(out: &mut String, segment: &str) -> Result<(), PathError> {
    let bytes = segment.as_bytes();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        out.push_str(&segment[copied..i]);
        let (value, _) = escape_at(bytes, i)?;
        if value == 0 {
            return Err(PathError::ControlCharacter);
        }
        if is_unreserved(value) {
            out.push(char::from(value));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(value >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(value & 0xf)]));
        }
        i += 3;
        copied = i;
    }
    out.push_str(&segment[copied..]);
    Ok(())
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Decodes the escape at `bytes[at]` (a `%`), returning its value and whether it used lower-case hex.
fn escape_at(bytes: &[u8], at: usize) -> Result<(u8, bool), PathError> {
    let hi = bytes.get(at + 1).copied().and_then(hex_value);
    let lo = bytes.get(at + 2).copied().and_then(hex_value);
    match (hi, lo) {
        (Some((hi, hi_lower)), Some((lo, lo_lower))) => Ok(((hi << 4) | lo, hi_lower || lo_lower)),
        _ => Err(PathError::BadPercentEncoding),
    }
}

/// Returns a hex digit's value and whether it was a lower-case letter.
fn hex_value(b: u8) -> Option<(u8, bool)> {
    match b {
        b'0'..=b'9' => Some((b - b'0', false)),
        b'A'..=b'F' => Some((b - b'A' + 10, false)),
        b'a'..=b'f' => Some((b - b'a' + 10, true)),
        _ => None,
    }
}

/// RFC 3986 §2.3: escapes of these carry no meaning and must be decoded to compare paths.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_dot_segment(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, PathError> {
        normalize_path(raw).map(Cow::into_owned)
    }

    fn assert_borrowed(raw: &str) {
        match normalize_path(raw) {
            Ok(Cow::Borrowed(p)) => assert_eq!(p, raw),
            other => panic!("{raw:?} should be borrowed unchanged, got {other:?}"),
        }
    }

    #[test]
    fn clean_paths_are_borrowed_unchanged() {
        for raw in [
            "/",
            "/a",
            "/a/",
            "/api/v1/users/42",
            "/a%2Fb",
            "/caf%C3%A9",
            "/a/.../b",
            "/.well-known/x",
            "/a..b/..c",
            "/ä",
        ] {
            assert_borrowed(raw);
        }
    }

    #[test]
    fn raw_backslashes_are_refused() {
        for raw in ["/a\\b", "/api/..\\admin/x", "\\", "/\\"] {
            let want = if raw.starts_with('/') {
                PathError::Backslash
            } else {
                PathError::NotAbsolute
            };
            assert_eq!(norm(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn relative_or_empty_paths_are_not_absolute() {
        for raw in ["", "a/b", "*", "http://x/a", "%2F"] {
            assert_eq!(norm(raw), Err(PathError::NotAbsolute), "{raw:?}");
        }
    }

    #[test]
    fn traversal_above_root_is_refused() {
        for raw in [
            "/..",
            "/../",
            "/a/../../etc",
            "/%2e%2e/x",
            "/%2E%2E",
            "/.%2e/x",
            "/%2e./x",
            "/a/b/../../../c",
            "//../x",
            "/./../x",
        ] {
            assert_eq!(norm(raw), Err(PathError::EscapesRoot), "{raw:?}");
        }
    }

    #[test]
    fn dot_segments_are_removed_including_encoded_ones() {
        assert_eq!(norm("/a/%2E%2e/b").unwrap(), "/b");
        assert_eq!(norm("/a/.%2e/b").unwrap(), "/b");
        assert_eq!(norm("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/a/%2e/b").unwrap(), "/a/b");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/b/../").unwrap(), "/a/");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/.").unwrap(), "/");
        assert_eq!(norm("/./").unwrap(), "/");
        assert_eq!(norm("/a/b/c/../../d").unwrap(), "/a/d");
    }

    #[test]
    fn repeated_slashes_are_merged_and_trailing_slash_kept() {
        assert_eq!(norm("//a///b").unwrap(), "/a/b");
        assert_eq!(norm("//").unwrap(), "/");
        assert_eq!(norm("/a//").unwrap(), "/a/");
        assert_eq!(norm("/a/b//").unwrap(), "/a/b/");
        assert_eq!(norm("//a/..//b").unwrap(), "/b");
    }

    #[test]
    fn encoded_separators_stay_encoded_with_upper_case_hex() {
        assert_eq!(norm("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(norm("/a%5cb").unwrap(), "/a%5Cb");
        // An encoded slash next to dots is data, not a traversal.
        assert_eq!(norm("/a/..%2f..%2fetc").unwrap(), "/a/..%2F..%2Fetc");
        assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(norm("/%41%62%2D%5F%7E%2E%30").unwrap(), "/Ab-_~.0");
        assert_eq!(norm("/%7euser").unwrap(), "/~user");
        // Reserved characters keep their escape.
        assert_eq!(norm("/a%3Fb%20c%25").unwrap(), "/a%3Fb%20c%25");
        assert_borrowed("/a%3Fb%20c%25");
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for raw in ["/%zz", "/%4", "/a%", "/%4g", "/%g4", "/a/%2", "//%zz/.."] {
            assert_eq!(norm(raw), Err(PathError::BadPercentEncoding), "{raw:?}");
        }
    }

    #[test]
    fn control_characters_are_refused_raw_or_as_nul_escape() {
        for raw in [
            "/%00", "/a%00b", "/a\nb", "/a\rb", "/\u{7f}", "/a\tb", "/%2e%00",
        ] {
            assert_eq!(norm(raw), Err(PathError::ControlCharacter), "{raw:?}");
        }
    }

    #[test]
    fn errors_have_actionable_messages() {
        assert_eq!(
            PathError::EscapesRoot.to_string(),
            "path escapes the root with `..`"
        );
        assert!(PathError::BadPercentEncoding
            .to_string()
            .contains("two hex digits"));
    }

    /// Small deterministic generator, so the property test needs no extra crate.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn normal_form_is_idempotent_and_borrowed_exactly_when_unchanged() {
        const ALPHABET: &[&str] = &[
            "/", "/", "a", "b", ".", ".", "%2e", "%2E", "%2f", "%2F", "%41", "%7e", "%zz", "%0",
            "%c3%a9", "~", "..", "%00",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            let mut raw = String::from("/");
            for _ in 0..(next(&mut state) % 10) {
                let i = usize::try_from(next(&mut state) % ALPHABET.len() as u64).unwrap();
                raw.push_str(ALPHABET[i]);
            }
            let Ok(once) = normalize_path(&raw) else {
                continue;
            };
            let changed = once != raw;
            assert_eq!(
                matches!(once, Cow::Owned(_)),
                changed,
                "{raw:?} -> {once:?}"
            );
            let twice = normalize_path(&once).unwrap();
            assert!(matches!(twice, Cow::Borrowed(_)), "{raw:?} -> {once:?}");
            assert!(!once.contains("//"), "{raw:?} -> {once:?}");
            assert!(
                !once.split('/').any(|s| s == "." || s == ".."),
                "{raw:?} -> {once:?}"
            );
        }
    }
}
