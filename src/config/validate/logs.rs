//! `[log]` and `[access_log]`.

use super::super::spanned::Spanned;

use super::super::file;
use super::super::log_filter;
use super::super::model::{LogFormat, LogSettings};
use super::Validator;
use crate::telemetry::access_log::{AccessLogSettings, Sink, FIELDS};

impl Validator<'_, '_> {
    /// `[log]`: text lines at `info` unless the section says otherwise.
    pub(super) fn log(&mut self, l: &file::LogSection) -> LogSettings {
        LogSettings {
            format: match l.format.unwrap_or_default() {
                file::LogFormat::Text => LogFormat::Text,
                file::LogFormat::Json => LogFormat::Json,
            },
            level: self.log_level(l.level.as_ref()),
        }
    }

    /// A filter directive `tracing` can read (`RUST_LOG` syntax).
    fn log_level(&mut self, level: Option<&Spanned<String>>) -> String {
        let Some(level) = level else {
            return "info".to_string();
        };
        if let Err(e) = log_filter(level.get_ref()) {
            self.c.at(
                level.span(),
                format!(
                    "invalid log level `{}`: {e} (use e.g. \"info\" or \"info,tollgate=debug\")",
                    level.get_ref()
                ),
            );
        }
        level.get_ref().clone()
    }

    /// `[access_log]`: on, to stdout, with every field, unless the section says otherwise.
    pub(super) fn access_log(
        &mut self,
        a: Option<&Spanned<file::AccessLogSection>>,
    ) -> AccessLogSettings {
        let s = a.map(|a| a.get_ref());
        let enabled = s.and_then(|s| s.enabled).unwrap_or(true);
        let sink = match s.and_then(|s| s.path.as_ref()) {
            _ if !enabled => None,
            None => Some(Sink::Stdout),
            Some(p) if p.get_ref() == "-" => Some(Sink::Stdout),
            Some(p) => Some(Sink::File(self.base_dir.join(p.get_ref()))),
        };
        let mut fields = Vec::new();
        for f in s.and_then(|s| s.fields.as_ref()).into_iter().flatten() {
            if FIELDS.contains(&f.get_ref().as_str()) {
                fields.push(f.get_ref().clone());
            } else {
                self.c.at(
                    f.span(),
                    format!(
                        "unknown access log field `{}`; known fields: {}",
                        f.get_ref(),
                        FIELDS.join(", ")
                    ),
                );
            }
        }
        AccessLogSettings { sink, fields }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::super::model::LogFormat;
    use super::super::testing::{errors, valid};
    use crate::telemetry::access_log::Sink;

    #[test]
    fn unknown_log_format_is_reported_at_the_value() {
        assert_eq!(
            errors("[log]\nformat = \"xml\"\n"),
            ["gateway.toml:2:10: unknown variant `xml`, expected `text` or `json`"]
        );
    }

    #[test]
    fn invalid_log_level_is_reported_at_the_value() {
        let errors = errors("[log]\nlevel = \"loud=[[\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("gateway.toml:2:9: invalid log level `loud=[[`: ")
                && errors[0].ends_with(" (use e.g. \"info\" or \"info,tollgate=debug\")"),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_access_log_field_is_reported_with_the_known_ones() {
        assert_eq!(
            errors("[access_log]\nfields = [\"status\", \"latency\"]\n"),
            ["gateway.toml:2:21: unknown access log field `latency`; known fields: time, request_id, trace_id, client_ip, method, host, path, query, protocol, route, upstream, target, status, bytes_sent, bytes_received, duration_ms, upstream_ms, attempts, error"]
        );
    }

    #[test]
    fn logs_reach_the_model() {
        let built = valid("[log]\nformat = \"json\"\nlevel = \"debug\"\n");
        assert_eq!(built.config.log.format, LogFormat::Json);
        assert_eq!(built.config.log.level, "debug");
        assert_eq!(built.config.access_log.sink, Some(Sink::Stdout));
        assert!(built.config.access_log.fields.is_empty());
        let built = valid("[access_log]\npath = \"logs/access.log\"\nfields = [\"status\"]\n");
        assert_eq!(
            built.config.access_log.sink,
            Some(Sink::File(PathBuf::from("logs/access.log")))
        );
        assert_eq!(built.config.access_log.fields, ["status"]);
        let built = valid("[access_log]\nenabled = false\npath = \"-\"\n");
        assert_eq!(built.config.access_log.sink, None);
        assert_eq!(valid("").config.log.format, LogFormat::Text);
    }
}
