//! Transcoding hot paths: JSON → protobuf → JSON for a small and a ~10 KB message, and finding
//! the binding of a path among 500 (`Transcoder::matches_request`, the per-request check).

use std::hint::black_box;
use std::path::PathBuf;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method, Uri};
use serde_json::json;
use tollgate::grpc::{GrpcSection, Transcoder};

fn engine(dir: &std::path::Path, proto: &str) -> Transcoder {
    let section: GrpcSection = toml::from_str(&format!(
        "protos = [\"{proto}\"]\ninclude_paths = [\"proto\"]"
    ))
    .unwrap();
    Transcoder::build(&section, dir).unwrap()
}

/// The framed request → the bare message the upstream would echo back.
fn unframe(framed: &Bytes) -> Bytes {
    framed.slice(5..)
}

fn json_round_trip(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let t = engine(&root, "tollgate/test/v1/test.proto");
    let small = json!({"name": "n", "i32": 5, "i64": "9007199254740993", "flag": true,
                       "color": "COLOR_RED", "at": "2024-01-02T03:04:05Z"})
    .to_string();
    // Typed fields, as most APIs have; one small Struct.
    let children: serde_json::Map<_, _> = (0..80)
        .map(|i| {
            let child = json!({"id": format!("item-{i:04}"), "depth": i,
                               "labels": ["alpha", "beta"], "color": "COLOR_GREEN"});
            (format!("child-{i}"), child)
        })
        .collect();
    let large = json!({
        "name": "large", "tags": (0..100).map(|i| format!("tag-{i}")).collect::<Vec<_>>(),
        "numbers": (0..100).map(|i| (i * 1_000_003).to_string()).collect::<Vec<_>>(),
        "counts": (0..50).map(|i| (format!("k{i}"), json!(i))).collect::<serde_json::Map<_, _>>(),
        "children": children, "meta": {"owner": "bench", "tags": ["a", "b"], "n": 1.5},
        "ttl": "3.5s", "mask": "name,tags,meta"
    })
    .to_string();
    assert!(
        (9_000..12_000).contains(&large.len()),
        "large is {} bytes",
        large.len()
    );
    for (name, body) in [("small", small), ("10KB", large)] {
        let body = body.into_bytes();
        c.bench_function(&format!("transcode/json_to_proto_to_json/{name}"), |b| {
            b.iter(|| {
                let (_, framed) = t
                    .encode_request(&Method::POST, "/v1/echo", black_box(&body))
                    .unwrap();
                t.decode_response(&Method::POST, "/v1/echo", unframe(&framed))
                    .unwrap()
            })
        });
    }
}

fn path_matching(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("proto")).unwrap();
    let mut proto = String::from(
        "syntax = \"proto3\";\npackage bench;\nimport \"google/api/annotations.proto\";\n\
         message Req { string id = 1; string item = 2; string name = 3; }\nservice Big {\n",
    );
    for i in 0..500 {
        let rule = match i % 5 {
            0 => format!("get: \"/v1/res{i}/{{id}}\""),
            1 => format!("get: \"/v1/res{i}/{{id}}/items/{{item}}\""),
            2 => format!("post: \"/v1/{{name=res{i}/*}}:run\" body: \"*\""),
            3 => format!("patch: \"/v1/res{i}/{{id}}\" body: \"*\""),
            _ => format!("get: \"/v1/files{i}/{{name=**}}\""),
        };
        proto.push_str(&format!(
            "  rpc M{i}(Req) returns (Req) {{ option (google.api.http) = {{ {rule} }}; }}\n"
        ));
    }
    proto.push_str("}\n");
    std::fs::write(dir.path().join("proto/big.proto"), proto).unwrap();
    let t = engine(dir.path(), "big.proto");
    let headers = HeaderMap::new();
    for (name, method, path) in [
        ("literal_first", Method::GET, "/v1/res0/abc"),
        ("nested_last", Method::GET, "/v1/res496/abc/items/x"),
        ("verb", Method::POST, "/v1/res252/abc:run"),
        ("double_star", Method::GET, "/v1/files499/a/b/c/d"),
        ("miss", Method::GET, "/v1/nothing/here"),
    ] {
        let uri: Uri = path.parse().unwrap();
        c.bench_function(&format!("transcode/match_500_bindings/{name}"), |b| {
            b.iter(|| t.matches_request(black_box(&method), black_box(&uri), &headers))
        });
    }
}

criterion_group!(benches, json_round_trip, path_matching);
criterion_main!(benches);
