//! The .proto files tollgate carries itself: `google/api` (HTTP annotations) and `google/rpc`
//! (error model), so that users need no googleapis checkout, and so that every schema can show
//! `google.rpc.Status` details whatever source it came from.

use protox::file::{File, FileResolver};

/// `(import name, source)` of every embedded file.
pub const FILES: &[(&str, &str)] = &[
    (
        "google/api/http.proto",
        include_str!("../../proto/google/api/http.proto"),
    ),
    (
        "google/api/annotations.proto",
        include_str!("../../proto/google/api/annotations.proto"),
    ),
    (
        "google/rpc/status.proto",
        include_str!("../../proto/google/rpc/status.proto"),
    ),
    (
        "google/rpc/error_details.proto",
        include_str!("../../proto/google/rpc/error_details.proto"),
    ),
];

/// Files added to every schema so that error details can be decoded.
pub const ALWAYS: &[&str] = &["google/rpc/status.proto", "google/rpc/error_details.proto"];

/// Resolves the embedded files by import name; put it after the user's include paths so that
/// their own copies win.
#[derive(Debug, Default)]
pub struct EmbeddedResolver;

impl FileResolver for EmbeddedResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match FILES.iter().find(|(n, _)| *n == name) {
            Some((n, source)) => File::from_source(n, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Compiles `names` from the embedded files and protobuf's well-known types into an encoded
/// FileDescriptorSet, with imports, dependencies first.
pub fn compile(names: &[&str]) -> Result<Vec<u8>, String> {
    let mut chain = protox::file::ChainFileResolver::new();
    chain.add(EmbeddedResolver);
    chain.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(chain);
    compiler.include_imports(true);
    compiler
        .open_files(names)
        .map_err(|e| format!("built-in proto files: {e}"))?;
    Ok(compiler.encode_file_descriptor_set())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_file_compiles() {
        let names: Vec<&str> = FILES.iter().map(|(n, _)| *n).collect();
        let files = super::super::schema::split_set(&compile(&names).unwrap()).unwrap();
        let got: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        for n in names {
            assert!(got.contains(&n), "{n} missing from {got:?}");
        }
        assert!(got.contains(&"google/protobuf/any.proto"));
    }
}
