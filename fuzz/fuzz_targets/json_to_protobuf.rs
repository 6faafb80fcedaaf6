//! The transcoder's request side: method, path, query and JSON body → protobuf messages, with
//! the schema of proto/tollgate/test/v1/test.proto (every kind of field the proto3 JSON mapping
//! treats specially, and one binding per HttpRule feature).
//!
//! Input: line 1 is `METHOD /path?query`, the rest is the body. It goes through two engines,
//! one with the default options and one lenient (unknown fields ignored, enum names in any
//! case, shallow `max_depth`), so both the direct body parse and the general path run.
//!
//! Properties: what is accepted is a sequence of well-formed gRPC frames; a refusal says why;
//! and a message of `Echo` (whose reply type is its request type) survives
//! protobuf → JSON → protobuf → JSON unchanged.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use http::Method;
use libfuzzer_sys::fuzz_target;
use tollgate::grpc::fuzzing::{FrameDecoder, FrameError};
use tollgate::grpc::{GrpcSection, Transcoder};

const ECHO: &str = "/tollgate.test.v1.TestService/Echo";

fn engines() -> &'static [Transcoder; 2] {
    static ENGINES: OnceLock<[Transcoder; 2]> = OnceLock::new();
    ENGINES.get_or_init(|| {
        let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        let base = "protos = [\"tollgate/test/v1/test.proto\"]\ninclude_paths = [\"proto\"]\n";
        let lenient = "unknown_fields = \"ignore\"\ncase_insensitive_enums = true\nmax_depth = 8\n";
        [base.to_owned(), format!("{base}{lenient}")].map(|src| {
            let section: GrpcSection = match toml::from_str(&src) {
                Ok(s) => s,
                Err(e) => panic!("fuzz harness grpc table: {e}"),
            };
            match Transcoder::build(&section, root) {
                Ok(t) => t,
                Err(e) => panic!("fuzz harness schema: {e}"),
            }
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return;
    };
    let Some((method, target)) = head.split_once(' ') else {
        return;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    for engine in engines() {
        let (grpc_path, framed) = match engine.encode_request(&method, target, body) {
            Ok(done) => done,
            Err(e) => {
                assert!(!e.to_string().trim().is_empty(), "a refusal must say why");
                continue;
            }
        };
        let messages = frames(&framed);
        if grpc_path == ECHO {
            for m in messages {
                round_trip(engine, m);
            }
        }
    }
});

/// Splits the engine's output into its messages, checking the framing.
fn frames(framed: &Bytes) -> Vec<Bytes> {
    let mut decoder = FrameDecoder::new(usize::MAX);
    decoder.push(framed);
    let mut out = Vec::new();
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                assert_eq!(frame.flags, 0, "request frames are uncompressed messages");
                out.push(frame.data);
            }
            Ok(None) => break,
            Err(FrameError::TooLarge { .. } | FrameError::Truncated) => unreachable!(),
        }
    }
    assert_eq!(
        decoder.finish(),
        Ok(()),
        "the frames cover the whole payload"
    );
    out
}

/// An `Everything` message → JSON → message → JSON: both JSON texts are the same value.
fn round_trip(engine: &Transcoder, message: Bytes) {
    let json = engine
        .decode_response(&Method::POST, "/v1/echo", message)
        .unwrap_or_else(|e| panic!("an accepted request message cannot be written as JSON: {e}"));
    let (_, framed) = engine
        .encode_request(&Method::POST, "/v1/echo", &json)
        .unwrap_or_else(|e| {
            panic!(
                "the engine refuses its own JSON {}: {e}",
                String::from_utf8_lossy(&json)
            )
        });
    let again = frames(&framed);
    assert_eq!(again.len(), 1);
    let json2 = engine
        .decode_response(&Method::POST, "/v1/echo", again[0].clone())
        .unwrap_or_else(|e| panic!("second write failed: {e}"));
    let parse = |j: &[u8]| serde_json::from_slice::<serde_json::Value>(j).ok();
    assert_eq!(
        parse(&json),
        parse(&json2),
        "JSON changed on a round trip:\n{}\n{}",
        String::from_utf8_lossy(&json),
        String::from_utf8_lossy(&json2)
    );
}
