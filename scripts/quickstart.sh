#!/usr/bin/env bash
# One command from a fresh clone to a running gateway: installs prerequisites, builds, starts the
# sample services that gateway.toml routes to, and runs tollgate in the foreground (Ctrl-C stops
# everything).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-prereqs.sh --no-brokers
# The publish route's broker: nats-server from Debian (seconds to install, unlike the tests' other
# brokers).
./scripts/install-brokers.sh --nats-only
cargo build --release -p tollgate -p sample-http -p sample-grpc

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

./target/release/sample-http 127.0.0.1:3001 users & pids+=($!)
./target/release/sample-http 127.0.0.1:3002 orders & pids+=($!)
./target/release/sample-grpc 127.0.0.1:50051 & pids+=($!)
nats_dir="$(mktemp -d)"
nats-server -js -a 127.0.0.1 -p 4222 -sd "$nats_dir" >"$nats_dir/nats.log" 2>&1 & pids+=($!)

# Wait until they answer, so the gateway's first health checks (and its broker) find them up.
for port in 3001 3002 50051 4222; do
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done

# The stream that stores what the `events` route publishes (JetStream acknowledges a message
# only once a stream has it): created over NATS's text protocol, so no client is needed.
create_stream() {
  local json='{"name":"EVENTS","subjects":["events.>"],"storage":"memory","max_msgs":100000}'
  exec 3<>/dev/tcp/127.0.0.1/4222
  printf 'CONNECT {"verbose":false}\r\nSUB _INBOX.quickstart 1\r\nPUB $JS.API.STREAM.CREATE.EVENTS _INBOX.quickstart %d\r\n%s\r\n' \
    "${#json}" "$json" >&3
  local line reply=""
  while IFS= read -r -t 5 line <&3; do
    case "$line" in MSG*) IFS= read -r -t 5 reply <&3; break ;; esac
  done
  exec 3>&-
  case "$reply" in
    *'"error"'*) echo "quickstart: NATS stream EVENTS not created: $reply" >&2 ;;
  esac
}
create_stream

echo "tollgate: proxy on http://127.0.0.1:8080, admin on http://127.0.0.1:9901"
./target/release/tollgate -c gateway.toml
