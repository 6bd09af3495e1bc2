#!/usr/bin/env bash
# The main job on one machine: the whole distributed system under load.
# Ensures Redis, RabbitMQ and PostgreSQL are running (installing them from
# Debian's packages if missing), builds in release, creates the database,
# starts chatflow-consumer and chatflow-server, runs a load test with
# chatflow-client, prints its summary and where the report is, then stops
# what it started.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: ./run-local.sh [chatflow-client flags...]

Starts the services if needed, builds everything in release, sets up the
`chatflow` database (database/setup_database.sh), starts the consumer and
the server on 127.0.0.1:8080 (metrics: consumer :8083), runs the load client
(default: the seed's normal load, 500,000 messages, 64 threads), prints the
summary and the report directory, and stops consumer and server.

Extra flags go to the client, e.g.
  ./run-local.sh -n 1000000          # the seed's stress load
  ./run-local.sh -n 200000 -w 16     # 16 messages in flight per connection
The run ends by fetching the read API's document for its window
(metrics.json beside the report; the summary shows stored vs acked).
Environment: PORT (8080), API_PORT (8082), CONSUMER_METRICS (127.0.0.1:8083), DB_NAME
(chatflow), DB_USER (postgres: trust auth locally), BROKER (rabbitmq; memory
runs without consumer and services), SERVE=1 keeps the system running after
the load test until Ctrl-C, DRAIN_SECS (0: one server and no load balancer,
so the server's stop skips the drain that a fleet needs).
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

cd "$(dirname "$0")"
PORT="${PORT:-8080}"
API_PORT="${API_PORT:-8082}"
CONSUMER_METRICS="${CONSUMER_METRICS:-127.0.0.1:8083}"
BROKER="${BROKER:-rabbitmq}"
export DB_USER="${DB_USER:-postgres}" DB_NAME="${DB_NAME:-chatflow}" DB_HOST="${DB_HOST:-127.0.0.1}"
export DRAIN_SECS="${DRAIN_SECS:-0}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p results
log_dir="results/run-local-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$log_dir"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT

wait_http() {
  local url="$1" what="$2"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/${url%:*}/${url##*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "run-local.sh: $what did not come up on $url (see $log_dir)" >&2
  exit 1
}

echo "== build (release)"
cargo build --release -p chatflow-server -p chatflow-consumer -p chatflow-client

if [[ "$BROKER" == rabbitmq ]]; then
  echo "== services"
  scripts/ensure-services.sh redis rabbitmq postgres
  echo "== database"
  database/setup_database.sh
  echo "== consumer (log: $log_dir/consumer.log)"
  target/release/chatflow-consumer --metrics-bind "$CONSUMER_METRICS" >"$log_dir/consumer.log" 2>&1 &
  pids+=($!)
  wait_http "$CONSUMER_METRICS" "chatflow-consumer"
fi

echo "== server (log: $log_dir/server.log)"
target/release/chatflow-server --bind "127.0.0.1:$PORT" --broker "$BROKER" --api-bind "127.0.0.1:$API_PORT" >"$log_dir/server.log" 2>&1 &
pids+=($!)
wait_http "127.0.0.1:$PORT" "chatflow-server"

echo "== load test"
target/release/chatflow-client --url "ws://127.0.0.1:$PORT" --api-url "http://127.0.0.1:$API_PORT" "$@"

echo
echo "server health:   $(curl -s "http://127.0.0.1:$PORT/health" 2>/dev/null || echo unavailable)"
echo "read API:        http://127.0.0.1:$API_PORT/api/metrics (tables: target/release/chatflow-client metrics --api-url http://127.0.0.1:$API_PORT)"
if [[ "$BROKER" == rabbitmq ]]; then
  echo "consumer health: http://$CONSUMER_METRICS/health (logs in $log_dir)"
fi
if [[ "${SERVE:-0}" == 1 ]]; then
  echo "SERVE=1: system running on ws://127.0.0.1:$PORT/chat/{roomId}; Ctrl-C stops it"
  wait "${pids[@]}"
fi
