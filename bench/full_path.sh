#!/usr/bin/env bash
# Full-path load run (issues 4 and 5): consumer + server (release) on this
# machine with RabbitMQ, Redis and PostgreSQL, chatflow-client driving it,
# queue depth sampled every 2 s, and rows stored checked against acks.
#
#   bench/full_path.sh [PERSIST=true|false] -- CLIENT FLAGS...
#   PERSIST=false bench/full_path.sh -- -n 500000 -w 1
#   PERSIST=true  bench/full_path.sh -- -n 500000 -w 16
#   PRESENCE=off  bench/full_path.sh -- -n 100000 -w 1   (the server reads
#                 PRESENCE from its environment: presence on vs. off)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ "${1:-}" == "--" ]] && shift
PERSIST="${PERSIST:-true}"
PORT="${PORT:-18280}"
NS="bench-$(date +%s)"
DB="${DB_NAME:-chatflow}"
ulimit -n "$(ulimit -Hn)"
# BIN=DIR runs binaries built elsewhere (e.g. a copy of an earlier commit's,
# for a before/after comparison); it must hold chatflow-server,
# chatflow-consumer, chatflow-client and queue_depth.
if [[ -z "${BIN:-}" ]]; then
  cargo build --release -q -p chatflow-server -p chatflow-consumer -p chatflow-client
  cargo build --release -q -p chatflow-consumer --example queue_depth
  mkdir -p target/release/bench-bin
  cp target/release/chatflow-{server,consumer,client} target/release/examples/queue_depth target/release/bench-bin/
  BIN=target/release/bench-bin
fi
scripts/ensure-services.sh redis rabbitmq postgres
DB_USER=postgres DB_NAME="$DB" database/setup_database.sh >/dev/null
before=$(psql -h 127.0.0.1 -U postgres -d "$DB" -Atc "select count(*) from messages")
out="results/full-path-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"

NAMESPACE="$NS" ENABLE_PERSISTENCE="$PERSIST" DB_USER=postgres DB_NAME="$DB" \
  "$BIN"/chatflow-consumer --metrics-bind 127.0.0.1:18283 >"$out/consumer.log" 2>&1 &
consumer=$!
sleep 2
NAMESPACE="$NS" DRAIN_SECS=0 "$BIN"/chatflow-server --bind "127.0.0.1:$PORT" >"$out/server.log" 2>&1 &
server=$!
cleanup() {
  kill "$server" "$consumer" 2>/dev/null || true
  wait "$server" "$consumer" 2>/dev/null || true
  [[ -n "${depth:-}" ]] && kill "$depth" 2>/dev/null || true
  for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$NS\."); do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
  # Its exchanges too (rabbitmqctl cannot delete those): chaosload's
  # topology deletion, when it is built.
  if [[ -x target/release/chaosload ]]; then
    target/release/chaosload --delete-topology "$NS" --rooms "${ROOMS:-20}" --url x >/dev/null 2>&1 || true
  fi
  # The rooms' history streams (the consumer appends every broadcast) and
  # the server's presence (it would expire within seconds anyway).
  redis-cli --scan --pattern "$NS:history:*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$NS:presence:*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
}
trap cleanup EXIT
sleep 1
NAMESPACE="$NS" "$BIN"/queue_depth --seconds 3600 --interval 2 >"$out/queue_depth.txt" 2>&1 &
depth=$!
"$BIN"/chatflow-client --url "ws://127.0.0.1:$PORT" --progress off -o "$out/client" "$@" | tee "$out/client.txt"
kill -INT "$depth" 2>/dev/null || true
sleep 2
awk '/ready=/{split($2,a,"="); n++; s+=a[2]; if (a[2]>m) m=a[2]} END {printf "queue depth (2 s samples): %d samples, mean %.0f, max %d ready messages\n", n, s/(n?n:1), m}' "$out/queue_depth.txt" | tee -a "$out/client.txt"
curl -s http://127.0.0.1:18283/health > "$out/consumer-health.json" || true
if [[ "$PERSIST" == true ]]; then
  for _ in $(seq 1 60); do
    acked=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['total']['acked'])" "$out/client/summary.json")
    now=$(psql -h 127.0.0.1 -U postgres -d "$DB" -Atc "select count(*) from messages")
    [[ $((now - before)) -ge "${acked:-0}" ]] && break
    sleep 1
  done
  echo "rows stored by this run: $((now - before)); messages acked: ${acked:-?}" | tee -a "$out/client.txt"
fi
echo "report: $out"
