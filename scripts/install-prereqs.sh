#!/usr/bin/env bash
# Installs the system packages tollgate's build and tests need on a fresh Debian/Ubuntu machine.
# pingora's boringssl-free build still needs cmake (for its zlib/brotli deps); the rate-limit tests
# need a real redis-server, tests/operations.rs promtool, the broker tests real message brokers
# (install-brokers.sh). Safe to run repeatedly: it installs only what is missing.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# promtool checks /metrics in tests/operations.rs; it ships in Debian's prometheus package (the
# server is installed but not started).
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# librdkafka 2.12's CMake build (rdkafka's cmake-build feature) includes <curl/curl.h> even when
# built without curl (confluentinc/librdkafka#5135: `#ifdef` on a macro CMake always defines, as 0);
# only the header is needed, nothing links against libcurl.
echo '#include <curl/curl.h>' | cc -E -x c - >/dev/null 2>&1 || need+=(libcurl4-openssl-dev)

if [ ${#need[@]} -eq 0 ]; then
  echo "prerequisites present"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# The brokers of tests/brokers.rs (RabbitMQ, NATS, and tansu for Kafka); after the packages above,
# since building tansu needs the C toolchain. Only the tests need them: --no-brokers (quickstart.sh)
# spares a build-and-run machine two services' packages and tansu's ten-minute build.
if [ "${1:-}" != "--no-brokers" ]; then
  "$(dirname "$0")/install-brokers.sh"
fi
