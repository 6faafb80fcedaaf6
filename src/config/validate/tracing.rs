//! `[tracing]`: the table and the standard `OTEL_*` variables are merged and checked by
//! `telemetry::trace` (which owns their rules); this places its verdict in the report.

use super::super::spanned::Spanned;

use super::Validator;
use crate::telemetry::trace::{TracingSection, TracingSettings};

impl Validator<'_, '_> {
    /// The tracing settings; a mistake is reported at the `[tracing]` table, or at the top of
    /// the file when it comes from `OTEL_*` variables alone.
    pub(super) fn tracing(&mut self, t: Option<&Spanned<TracingSection>>) -> TracingSettings {
        match t {
            Some(t) => t.get_ref().validate().unwrap_or_else(|m| {
                self.c.at(t.span(), format!("tracing: {m}"));
                TracingSettings::default()
            }),
            None => TracingSection::default().validate().unwrap_or_else(|m| {
                self.c
                    .at(0..0, format!("tracing (from OTEL_* variables): {m}"));
                TracingSettings::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, valid};

    #[test]
    fn a_mistake_in_the_table_is_reported_at_the_table() {
        assert_eq!(
            errors("[log]\nlevel = \"info\"\n[tracing]\nenabled = true\nprotocol = \"thrift\"\n"),
            ["gateway.toml:3:1: tracing: protocol: unknown protocol `thrift`, expected \"grpc\" or \"http/protobuf\""]
        );
    }

    #[test]
    fn tracing_is_off_unless_the_table_turns_it_on() {
        assert!(!valid("").config.tracing.enabled());
        assert!(!valid("[tracing]\nprotocol = \"grpc\"\n")
            .config
            .tracing
            .enabled());
        assert!(valid("[tracing]\nenabled = true\n")
            .config
            .tracing
            .enabled());
    }
}
