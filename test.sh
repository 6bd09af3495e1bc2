#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy with warnings denied, and the
# whole workspace's tests (unit and integration, against real sockets).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: ./test.sh [cargo test args...]

Starts Redis, RabbitMQ and PostgreSQL if they are not running (installing them from
Debian's packages if missing: scripts/ensure-services.sh), then runs, from
the repository root:
  1. cargo fmt --all -- --check
  2. cargo clippy --workspace --all-targets -- -D warnings
  3. cargo test --workspace [args]
Extra arguments go to cargo test (e.g. ./test.sh -p chatflow-server).
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

cd "$(dirname "$0")"

# Tests talk to real Redis, RabbitMQ and PostgreSQL: start any that is down.
scripts/ensure-services.sh redis rabbitmq postgres

# Tests hold thousands of sockets on both ends of loopback connections.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace "$@"
