#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy with warnings denied, and the
# whole workspace's tests (unit and integration, against real services).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: ./test.sh [--heavy] [cargo test args...]

Starts Redis, RabbitMQ and PostgreSQL if they are not running (installing them from
Debian's packages if missing: scripts/ensure-services.sh), then runs, from
the repository root:
  1. cargo fmt --all -- --check
  2. cargo clippy --workspace --all-targets -- -D warnings
  3. cargo test --workspace [args]
--heavy also runs the tests marked #[ignore = "heavy: …"] (minutes each:
clusters, endurance, long chaos runs) and then bench/cluster.sh, the
failover run on a local three-node RabbitMQ cluster, Redis with Sentinels
and a PostgreSQL replica (scripts/local-cluster.sh starts and stops them);
CI runs with --heavy. Every other test is in the default run, which keeps
one fast test of every guarantee.
Extra arguments go to cargo test (e.g. ./test.sh -p chatflow-server).
USAGE
}
heavy=0
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --heavy) heavy=1; shift ;;
esac

cd "$(dirname "$0")"

# Tests talk to real Redis, RabbitMQ and PostgreSQL: start any that is down.
scripts/ensure-services.sh redis rabbitmq postgres
# And the programs some tests drive (HAProxy, Chromium, promtool, the
# Prometheus parser).
scripts/ensure-tools.sh

# Tests hold thousands of sockets on both ends of loopback connections.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
if [ "$heavy" = 1 ]; then
  cargo test --workspace "$@" -- --include-ignored
  echo "== bench/cluster.sh (failover on clustered services)"
  bench/cluster.sh
else
  cargo test --workspace "$@"
fi
