#!/usr/bin/env bash
# A RabbitMQ outage under load (issue 15): two servers and a consumer in a
# namespace and database of their own, chatflow-client over both
# (`--url A,B`), and RabbitMQ stopped (`rabbitmqctl stop_app`) for a while
# during the run, then started again. Prints the client's report (failed,
# retries, the outages it saw, the wait in back-off) and the rows stored.
# Loopback only; cleans up after itself (processes, queues, Redis keys, the
# database), also on failure.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: bench/broker_outage.sh [--outage SECONDS] [--after SECONDS] [--client PATH] [-- CLIENT FLAGS...]

  --outage S     how long RabbitMQ stays stopped (default 20)
  --after S      seconds of load before it stops (default 5)
  --client PATH  the chatflow-client binary to drive the run (default: this
                 checkout's release build), e.g. an earlier commit's for a
                 before/after comparison
  CLIENT FLAGS   passed on (default: -n 200000 -t 32)
It stops and starts RabbitMQ: run it when nothing else uses it.
USAGE
}
OUTAGE=20
AFTER=5
CLIENT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --outage) OUTAGE="$2"; shift 2 ;;
    --after) AFTER="$2"; shift 2 ;;
    --client) CLIENT="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "broker_outage.sh: unknown flag $1" >&2; usage >&2; exit 2 ;;
  esac
done
CLIENT_FLAGS=("$@")
[[ ${#CLIENT_FLAGS[@]} -gt 0 ]] || CLIENT_FLAGS=(-n 200000 -t 32)

cd "$(dirname "$0")/.."
ROOMS=4
NS="outage$$"
DB="chatflow_outage_$$"
PORT_A=18311 PORT_B=18312
out="results/broker-outage-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"

scripts/ensure-services.sh redis rabbitmq postgres
# BIN=DIR runs a server and consumer built elsewhere (it must hold
# chatflow-server, chatflow-consumer and chatflow-client); chaosload (which
# deletes the run's queues) always comes from this checkout.
if [[ -z "${BIN:-}" ]]; then
  # Separate builds: `--bin` would narrow one build to that binary alone.
  cargo build --release -q -p chatflow-server -p chatflow-consumer -p chatflow-client
  BIN=target/release
fi
[[ -x target/release/chaosload ]] || cargo build --release -q -p chatflow-bench --bin chaosload
CLIENT="${CLIENT:-$BIN/chatflow-client}"

export NAMESPACE="$NS" ROOMS DB_USER=postgres DB_NAME="$DB" ENABLE_PERSISTENCE=true
DB_USER=postgres DB_NAME="$DB" database/setup_database.sh >/dev/null

pids=()
cleanup() {
  set +e
  rabbitmqctl -q start_app >/dev/null 2>&1
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 150); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null; done
  target/release/chaosload --delete-topology "$NS" --rooms "$ROOMS" --url x >/dev/null 2>&1
  redis-cli --scan --pattern "$NS:*" | xargs -r redis-cli del >/dev/null 2>&1
  psql -X -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1
}
trap cleanup EXIT

"$BIN/chatflow-consumer" --metrics-bind 127.0.0.1:18313 >"$out/consumer.log" 2>&1 &
pids+=($!)
for s in a:$PORT_A b:$PORT_B; do
  "$BIN/chatflow-server" --bind "127.0.0.1:${s#*:}" --server-id "outage-${s%%:*}" --api-bind off \
    --no-pin --workers 1 >"$out/server-${s%%:*}.log" 2>&1 &
  pids+=($!)
done
for port in $PORT_A $PORT_B; do
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.1
  done
done

step() { echo "$(date +%H:%M:%S.%N | cut -c1-12) $*" | tee -a "$out/steps.log"; }
step "client: ${CLIENT_FLAGS[*]} over :$PORT_A and :$PORT_B ($CLIENT)"
"$CLIENT" --url "ws://127.0.0.1:$PORT_A,ws://127.0.0.1:$PORT_B" --rooms "$ROOMS" \
  --progress off -o "$out/client" "${CLIENT_FLAGS[@]}" >"$out/client.txt" 2>&1 &
client=$!
sleep "$AFTER"
step "rabbitmqctl stop_app for $OUTAGE s"
rabbitmqctl -q stop_app
sleep "$OUTAGE"
rabbitmqctl -q start_app
step "rabbitmqctl start_app done"
wait "$client" || step "client exited with $?"
step "client done"
cat "$out/client.txt"
sleep 3  # the last batches commit
rows=$(psql -X -h 127.0.0.1 -U postgres -d "$DB" -Atc "select count(*) from messages" 2>/dev/null || echo "?")
echo "broker-outage: rows stored $rows (details: $out)"
