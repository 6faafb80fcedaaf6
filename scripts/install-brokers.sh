#!/usr/bin/env bash
# The message brokers the tests run for real (tests/common/brokers.rs): rabbitmq-server and
# nats-server from Debian, and tansu, a Kafka-protocol broker in Rust, built with cargo (Apache
# Kafka's jars need a JVM and a download the test machines cannot make). Safe to run repeatedly:
# it prints nothing and changes nothing when everything is there.
#
# tansu is built once (about 10 minutes on two cores) into ${TOLLGATE_TOOLS:-$HOME/.cache/tollgate-tools}
# and reused by every later run, CI included, as long as it is the pinned version.
#
# --nats-only (quickstart.sh): nats-server alone, the broker the quick start's publish route uses.
set -euo pipefail

NATS_ONLY=""
if [ "${1:-}" = "--nats-only" ]; then NATS_ONLY=1; fi

TANSU_VERSION=0.6.0
TOOLS="${TOLLGATE_TOOLS:-$HOME/.cache/tollgate-tools}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
if [ -z "$NATS_ONLY" ]; then
  command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || need+=(rabbitmq-server)
fi
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  # The tests start their own brokers on ephemeral ports; the packages' services would only hold
  # 5672/4222 and run at every boot. Debian's policy-rc.d (exit 101) keeps maintainer scripts from
  # starting them; Docker images ship one already, so ours is added only when there is none.
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  cleanup_policy() { if [ -n "$own_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
  trap cleanup_policy EXIT
  install() {
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  }
  # A fresh image has no package lists; an update costs time, so only when the install needs it.
  if ! install; then
    $SUDO apt-get update -qq
    install
  fi
  cleanup_policy
  own_policy=""
  # Under systemd the units are still enabled for the next boot; these packages were installed for
  # the tests alone, so their services are switched off (a broker installed before is left alone).
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    units=()
    for pkg in "${need[@]}"; do
      case "$pkg" in
        rabbitmq-server) units+=(rabbitmq-server.service epmd.socket epmd.service) ;;
        nats-server) units+=(nats-server.service) ;;
      esac
    done
    $SUDO systemctl disable --now "${units[@]}" >/dev/null 2>&1 || true
  fi
fi

if [ -n "$NATS_ONLY" ]; then exit 0; fi

tansu="$TOOLS/bin/tansu"
have=""
if [ -x "$tansu" ]; then
  have="$("$tansu" --version 2>/dev/null || true)"
fi
if [ "$have" != "tansu $TANSU_VERSION" ]; then
  echo "building tansu $TANSU_VERSION into $TOOLS (once; about 10 minutes)"
  command -v cargo >/dev/null 2>&1 || { echo "cargo is needed to build tansu" >&2; exit 1; }
  # dynostore brings the in-memory storage engine (memory://) the tests use; --locked builds the
  # dependency versions tansu was released with.
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore \
    --root "$TOOLS" --force
fi
