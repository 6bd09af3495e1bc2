#!/usr/bin/env bash
# Runs `attackload` against a fresh release server (--broker memory, so the
# canary sees its own broadcasts): canary ack latency and server RSS before,
# during and after an attack.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: bench/attack.sh slowloris|never-read [attackload flags...]

  bench/attack.sh slowloris --attackers 2000 --byte-interval-secs 5
  bench/attack.sh never-read --attackers 300

Builds release binaries, starts chatflow-server on 127.0.0.1:18080
(PORT=… to change) with 2 workers and --broker memory, runs attackload with
20 s phases (--phase-secs to change), and stops the server.
USAGE
}
case "${1:-}" in -h|--help|"") usage; exit 0 ;; esac
attack="$1"; shift

cd "$(dirname "$0")/.."
port="${PORT:-18080}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p chatflow-server -p chatflow-bench
DRAIN_SECS=0 target/release/chatflow-server --broker memory --bind "127.0.0.1:$port" --workers 2 \
  >/tmp/attack-server.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.1
done
target/release/attackload --addr "127.0.0.1:$port" --server-pid "$server" --attack "$attack" "$@"
echo "server totals after the run:"
curl -fsS "http://127.0.0.1:$port/health" | python3 -c 'import json,sys; t=json.load(sys.stdin)["totals"]; print(json.dumps(t))'
