//! Config errors: every one carries the file and the position of the value it is about, and is
//! shown on one line: values echoed from the file are escaped when the error is displayed, so no
//! value can end the line early, forge another `FILE:LINE:COL:` line or drive the terminal.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One config error, shown as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            Escaped(&self.file.display().to_string()),
            self.line,
            self.col,
            Escaped(&self.message)
        )
    }
}

/// Displays text on one line with its control characters escaped the way Rust writes them in
/// string literals (`\n`, `\r`, `\t`, `\x1b`, `\u{85}`): C0 controls, DEL, C1 controls, and
/// the Unicode line and paragraph separators, which some viewers break lines at. Everything
/// else, backslashes included, is shown as is.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| needs_escape(c)) {
            f.write_str(&rest[..at])?;
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if (c as u32) < 0x80 => write!(f, "\\x{:02x}", c as u32)?,
                c => write!(f, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// All errors found in one config file (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors against one source text, turning byte spans into line:col.
pub(crate) struct Collector<'a> {
    file: &'a Path,
    src: &'a str,
    pub errors: Vec<ConfigError>,
    /// Errors shown after the sorted ones whatever their position (summaries of what is left out).
    last: Vec<ConfigError>,
    /// Byte offset of every line start, built at the first error: a file with thousands of
    /// errors must not be scanned from its start for each of them.
    lines: Vec<usize>,
}

impl<'a> Collector<'a> {
    pub fn new(file: &'a Path, src: &'a str) -> Self {
        Self {
            file,
            src,
            errors: Vec::new(),
            last: Vec::new(),
            lines: Vec::new(),
        }
    }

    pub fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let error = self.error(span, message.into());
        self.errors.push(error);
    }

    /// Like `at`, for an error that goes after all others, whatever its position.
    pub fn at_end(&mut self, span: Range<usize>, message: impl Into<String>) {
        let error = self.error(span, message.into());
        self.last.push(error);
    }

    fn error(&mut self, span: Range<usize>, message: String) -> ConfigError {
        if self.lines.is_empty() {
            self.lines = std::iter::once(0)
                .chain(self.src.match_indices('\n').map(|(at, _)| at + 1))
                .collect();
        }
        let (line, col) = line_col_indexed(self.src, &self.lines, span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            message,
        }
    }

    pub fn finish(mut self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() && self.last.is_empty() {
            Ok(())
        } else {
            self.errors.sort_by_key(|e| (e.line, e.col));
            self.errors.dedup();
            self.errors.append(&mut self.last);
            Err(ConfigErrors(self.errors))
        }
    }
}

/// 1-based line and column (in characters) of a byte offset, given where `src`'s lines start.
fn line_col_indexed(src: &str, lines: &[usize], offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let line = lines.partition_point(|&start| start <= offset).max(1);
    let line_start = lines.get(line - 1).copied().unwrap_or(0);
    let col = src[line_start..offset].chars().count() + 1;
    (line, col)
}

/// 1-based line and column (in characters) of a byte offset, the obvious way; the tests check
/// the indexed one against it.
#[cfg(test)]
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_line_and_column() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 9), (2, 3));
        assert_eq!(line_col(src, 999), (3, 1));
        let lines = [0, 6, 14];
        for offset in [0, 6, 8, 9, 13, 14, 999] {
            assert_eq!(
                line_col_indexed(src, &lines, offset),
                line_col(src, offset),
                "offset {offset}"
            );
        }
    }

    fn error(message: &str) -> String {
        ConfigError {
            file: "gateway.toml".into(),
            line: 3,
            col: 7,
            message: message.into(),
        }
        .to_string()
    }

    #[test]
    fn control_characters_in_messages_are_escaped() {
        assert_eq!(
            error("invalid host `a\r\ngateway.toml:1:1: all good\u{1b}[2J`"),
            "gateway.toml:3:7: invalid host `a\\r\\ngateway.toml:1:1: all good\\x1b[2J`"
        );
        assert_eq!(
            error("tab\there, nul\0, del\u{7f}, c1\u{85}, ls\u{2028}"),
            "gateway.toml:3:7: tab\\there, nul\\x00, del\\x7f, c1\\u{85}, ls\\u{2028}"
        );
        assert_eq!(
            error("plain `C:\\dir` and é"),
            "gateway.toml:3:7: plain `C:\\dir` and é"
        );
    }

    #[test]
    fn a_file_name_with_a_newline_stays_on_one_line() {
        let e = ConfigError {
            file: "a\nb.toml".into(),
            line: 1,
            col: 1,
            message: "m".into(),
        };
        assert_eq!(e.to_string(), "a\\nb.toml:1:1: m");
    }
}
