//! HttpRule path templates as google/api/http.proto defines them:
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches exactly this text.
    Literal(String),
    /// `*`: any one segment.
    Star,
    /// `**`: any number of segments, only at the end.
    DoubleStar,
}

/// A `{field.path=...}` variable and the segments it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The request field it sets, split at dots.
    pub field_path: Vec<String>,
    /// Index of its first segment.
    pub start: usize,
    /// Index past its last segment; `None` when it ends with `**` (the rest of the path).
    pub end: Option<usize>,
}

impl Variable {
    /// Whether it covers exactly one segment, which changes percent-decoding.
    pub fn is_single_segment(&self) -> bool {
        self.end == Some(self.start + 1)
    }
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The segments, variables flattened into them.
    pub segments: Vec<Segment>,
    /// The custom verb after `:`.
    pub verb: Option<String>,
    /// The variables, in order.
    pub variables: Vec<Variable>,
}

impl Template {
    /// Parses a template; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Template, String> {
        Parser {
            text,
            pos: 0,
            segments: Vec::new(),
            variables: Vec::new(),
        }
        .parse()
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        format!("path template `{}` at byte {}: {what}", self.text, self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn parse(mut self) -> Result<Template, String> {
        if self.peek() != Some(b'/') {
            return Err(self.err("must start with `/`"));
        }
        self.pos += 1;
        let mut verb = None;
        // "/" alone is the root: no segments.
        if self.pos < self.text.len() {
            self.segments_until(None)?;
            if self.peek() == Some(b':') {
                self.pos += 1;
                let lit = self.literal();
                if lit.is_empty() || self.pos != self.text.len() {
                    return Err(self.err("a verb is `:` and a literal, at the very end"));
                }
                verb = Some(lit);
            }
        }
        if self.pos != self.text.len() {
            return Err(self.err("unexpected character"));
        }
        if let Some(i) = self.segments.iter().position(|s| *s == Segment::DoubleStar) {
            if i + 1 != self.segments.len() {
                return Err(self.err("`**` must be the last segment"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for v in &self.variables {
            if !seen.insert(v.field_path.join(".")) {
                return Err(self.err(&format!(
                    "variable `{}` appears twice",
                    v.field_path.join(".")
                )));
            }
        }
        Ok(Template {
            segments: self.segments,
            verb,
            variables: self.variables,
        })
    }

    /// Segments up to the end, a `:` verb, or (inside a variable) the closing `}`.
    fn segments_until(&mut self, close: Option<u8>) -> Result<(), String> {
        loop {
            match self.peek() {
                Some(b'{') if close.is_none() => self.variable()?,
                Some(b'{') => return Err(self.err("variables cannot nest")),
                Some(b'*') => {
                    self.pos += 1;
                    if self.peek() == Some(b'*') {
                        self.pos += 1;
                        self.segments.push(Segment::DoubleStar);
                    } else {
                        self.segments.push(Segment::Star);
                    }
                }
                _ => {
                    let lit = self.literal();
                    if lit.is_empty() {
                        return Err(self.err("empty segment"));
                    }
                    self.segments.push(Segment::Literal(lit));
                }
            }
            match self.peek() {
                Some(b'/') => self.pos += 1,
                c if c == close || c == Some(b':') || c.is_none() => return Ok(()),
                _ => return Err(self.err("expected `/` between segments")),
            }
        }
    }

    fn literal(&mut self) -> String {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if matches!(c, b'/' | b'{' | b'}' | b':' | b'*' | b'=') {
                break;
            }
            self.pos += 1;
        }
        self.text[start..self.pos].to_string()
    }

    fn variable(&mut self) -> Result<(), String> {
        self.pos += 1; // '{'
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
                self.pos += 1;
            } else {
                break;
            }
        }
        let path = &self.text[start..self.pos];
        let field_path: Vec<String> = path.split('.').map(str::to_string).collect();
        if path.is_empty() || field_path.iter().any(|p| p.is_empty()) {
            return Err(self.err("a variable needs a field path like `{name}` or `{a.b}`"));
        }
        let first = self.segments.len();
        match self.peek() {
            Some(b'}') => self.segments.push(Segment::Star),
            Some(b'=') => {
                self.pos += 1;
                self.segments_until(Some(b'}'))?;
            }
            _ => return Err(self.err("expected `}` or `=` after the variable's field path")),
        }
        if self.peek() != Some(b'}') {
            return Err(self.err("unclosed variable"));
        }
        self.pos += 1;
        let end = if self.segments.last() == Some(&Segment::DoubleStar) {
            None
        } else {
            Some(self.segments.len())
        };
        self.variables.push(Variable {
            field_path,
            start: first,
            end,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Segment::*;

    fn lit(s: &str) -> Segment {
        Literal(s.into())
    }

    #[test]
    fn variable_with_segments_and_verb() {
        let t = Template::parse("/v1/{name=shelves/*}:archive").unwrap();
        assert_eq!(t.segments, vec![lit("v1"), lit("shelves"), Star]);
        assert_eq!(t.verb.as_deref(), Some("archive"));
        assert_eq!(
            t.variables,
            vec![Variable {
                field_path: vec!["name".into()],
                start: 1,
                end: Some(3)
            }]
        );
        assert!(!t.variables[0].is_single_segment());
    }

    #[test]
    fn nested_field_paths_and_plain_variables() {
        let t = Template::parse("/v1/nested/{nested.id}/depth/{nested.depth}").unwrap();
        assert_eq!(t.variables.len(), 2);
        assert_eq!(t.variables[0].field_path, vec!["nested", "id"]);
        assert!(t.variables[1].is_single_segment());
    }

    #[test]
    fn double_star_runs_to_the_end() {
        let t = Template::parse("/v1/files/{path=**}").unwrap();
        assert_eq!(t.segments, vec![lit("v1"), lit("files"), DoubleStar]);
        assert_eq!(t.variables[0].end, None);
        let t = Template::parse("/v1/**:get").unwrap();
        assert_eq!(t.verb.as_deref(), Some("get"));
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in [
            "v1/x",
            "/v1/{name",
            "/v1/{}",
            "/v1/{a={b}}",
            "/v1/**/x",
            "/v1//x",
            "/v1/{a}/{a}",
            "/v1/x:",
            "/v1/{a.}",
            "/v1/x}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn root_template_has_no_segments() {
        let t = Template::parse("/").unwrap();
        assert!(t.segments.is_empty());
    }
}
