#!/usr/bin/env bash
# The test command: installs what the tests need (cmake for pingora's build, redis-server for the
# shared rate-limit tests), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-prereqs.sh
cargo test --workspace --all-targets "$@"
