#!/usr/bin/env bash
# Issue-2 server benchmark: chatflow-server (release, --broker none unless
# BROKER is set, 2 workers) against wsload at 64x1, 64x32 and 1000x1.
# Prints one line per shape, plus the server's CPU seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-18090}"; BROKER="${BROKER:-none}"; DURATION="${DURATION:-10}"; THREADS="${THREADS:-1}"
# BIN=DIR runs binaries built elsewhere (chatflow-server and wsload), e.g.
# an earlier commit's, for a before/after comparison.
if [[ -z "${BIN:-}" ]]; then
  cargo build --release -q -p chatflow-server -p chatflow-bench
  BIN=target/release
fi
ulimit -n "$(ulimit -Hn)"
shapes=("${@}")
[[ ${#shapes[@]} -gt 0 ]] || shapes=("64 1" "64 32" "1000 1")
for shape in "${shapes[@]}"; do
  read -r conns window <<<"$shape"
  DRAIN_SECS=0 "$BIN"/chatflow-server --bind "127.0.0.1:$PORT" --workers 2 --broker "$BROKER" >/dev/null 2>&1 &
  srv=$!
  trap 'kill $srv 2>/dev/null || true' EXIT
  sleep 0.3
  "$BIN"/wsload --addr "127.0.0.1:$PORT" --connections "$conns" --window "$window" \
    --threads "$THREADS" --duration "$DURATION" --warmup 2
  ticks=$(awk '{print $14+$15}' "/proc/$srv/stat")
  echo "  server_cpu_seconds=$(echo "scale=2; $ticks/$(getconf CLK_TCK)" | bc)"
  kill -TERM "$srv"; wait "$srv" || true
  trap - EXIT
done
