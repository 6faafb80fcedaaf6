//! Reading `google.api.http` rules straight from descriptor bytes. Decoding the method options
//! with our own prost types needs neither the extension in the descriptor pool nor
//! re-encoded descriptors (which drop extension options), and a malformed option is an error
//! instead of a panic inside reflection code.

/// google.api.HttpRule on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRule {
    /// Unused in method options.
    #[prost(string, tag = "1")]
    pub selector: String,
    /// Method and path.
    #[prost(oneof = "Pattern", tags = "2, 3, 4, 5, 6, 8")]
    pub pattern: Option<Pattern>,
    /// Body mapping.
    #[prost(string, tag = "7")]
    pub body: String,
    /// Response field sent as the body.
    #[prost(string, tag = "12")]
    pub response_body: String,
    /// More bindings.
    #[prost(message, repeated, tag = "11")]
    pub additional_bindings: Vec<HttpRule>,
}

/// The method and path of a rule.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Pattern {
    /// GET.
    #[prost(string, tag = "2")]
    Get(String),
    /// PUT.
    #[prost(string, tag = "3")]
    Put(String),
    /// POST.
    #[prost(string, tag = "4")]
    Post(String),
    /// DELETE.
    #[prost(string, tag = "5")]
    Delete(String),
    /// PATCH.
    #[prost(string, tag = "6")]
    Patch(String),
    /// Another method.
    #[prost(message, tag = "8")]
    Custom(CustomPattern),
}

/// google.api.CustomHttpPattern.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CustomPattern {
    /// The method, or `*`.
    #[prost(string, tag = "1")]
    pub kind: String,
    /// The path template.
    #[prost(string, tag = "2")]
    pub path: String,
}

/// The parts of a FileDescriptorProto needed to find rules and imports.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawFile {
    /// File name, e.g. `greeter.proto`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Package.
    #[prost(string, tag = "2")]
    pub package: String,
    /// Imports.
    #[prost(string, repeated, tag = "3")]
    pub dependency: Vec<String>,
    /// Services.
    #[prost(message, repeated, tag = "6")]
    pub service: Vec<RawService>,
}

/// ServiceDescriptorProto, trimmed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawService {
    /// Simple name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Methods.
    #[prost(message, repeated, tag = "2")]
    pub method: Vec<RawMethod>,
}

/// MethodDescriptorProto, trimmed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawMethod {
    /// Simple name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Options.
    #[prost(message, optional, tag = "4")]
    pub options: Option<RawMethodOptions>,
}

/// MethodOptions with only the `google.api.http` extension.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawMethodOptions {
    /// `(google.api.http)`.
    #[prost(message, optional, tag = "72295728")]
    pub http: Option<HttpRule>,
}

/// A FileDescriptorSet whose files stay as their original bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawSet {
    /// Encoded FileDescriptorProtos.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub file: Vec<Vec<u8>>,
}

impl HttpRule {
    /// The HTTP method (`None`: any) and path template of this rule.
    pub fn method_and_path(&self) -> Option<(Option<&str>, &str)> {
        Some(match self.pattern.as_ref()? {
            Pattern::Get(p) => (Some("GET"), p.as_str()),
            Pattern::Put(p) => (Some("PUT"), p.as_str()),
            Pattern::Post(p) => (Some("POST"), p.as_str()),
            Pattern::Delete(p) => (Some("DELETE"), p.as_str()),
            Pattern::Patch(p) => (Some("PATCH"), p.as_str()),
            Pattern::Custom(c) if c.kind == "*" => (None, c.path.as_str()),
            Pattern::Custom(c) => (Some(c.kind.as_str()), c.path.as_str()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn rule_survives_a_round_trip_through_method_options() {
        let rule = HttpRule {
            pattern: Some(Pattern::Get("/v1/{name}".into())),
            additional_bindings: vec![HttpRule {
                pattern: Some(Pattern::Custom(CustomPattern {
                    kind: "*".into(),
                    path: "/any".into(),
                })),
                ..Default::default()
            }],
            ..Default::default()
        };
        let opts = RawMethodOptions { http: Some(rule) };
        let back = RawMethodOptions::decode(opts.encode_to_vec().as_slice()).unwrap();
        let rule = back.http.unwrap();
        assert_eq!(rule.method_and_path(), Some((Some("GET"), "/v1/{name}")));
        assert_eq!(
            rule.additional_bindings[0].method_and_path(),
            Some((None, "/any"))
        );
    }
}
