#!/usr/bin/env bash
# One command from a fresh clone to a running gateway: installs prerequisites, builds, starts the
# sample services that gateway.toml routes to, and runs tollgate in the foreground (Ctrl-C stops
# everything).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-prereqs.sh --no-brokers
cargo build --release -p tollgate -p sample-http -p sample-grpc

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

./target/release/sample-http 127.0.0.1:3001 users & pids+=($!)
./target/release/sample-http 127.0.0.1:3002 orders & pids+=($!)
./target/release/sample-grpc 127.0.0.1:50051 & pids+=($!)

# Wait until both answer, so the gateway's first health checks find them up.
for port in 3001 3002 50051; do
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done

echo "tollgate: proxy on http://127.0.0.1:8080, admin on http://127.0.0.1:9901"
./target/release/tollgate -c gateway.toml
