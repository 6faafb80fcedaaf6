//! Config errors: every one carries the file and the position of the value it is about.

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
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
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
}
