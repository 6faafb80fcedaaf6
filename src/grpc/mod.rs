//! gRPC: HTTP/JSON → gRPC transcoding (google.api.http), gRPC-Web, and gRPC-shaped errors.
//! PLACEHOLDER: being written.
