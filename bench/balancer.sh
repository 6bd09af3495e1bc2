#!/usr/bin/env bash
# The seed's normal load through HAProxy in front of two servers against
# the same load straight to one server, on this box, over the full path
# (RabbitMQ, a consumer, Redis, PostgreSQL): throughput and ack/delivery
# p99 for both, one line each. HAProxy runs tuning/haproxy.cfg unchanged
# (its deployed check profile). A namespace and database of its own;
# cleans up after itself (processes, queues, Redis keys, the database),
# also on failure.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: bench/balancer.sh [--persist true|false] [--rooms N] [-- CLIENT FLAGS...]

  --persist B    the consumer stores messages (default true: the full path)
  --rooms N      rooms, for servers, consumer and client (default 20, the seed's)
  CLIENT FLAGS   passed to both chatflow-client runs (default: the client's
                 own defaults, i.e. the seed's normal load: -n 500000, 64
                 connections); e.g. -- -n 20000 for a smoke run
First one server alone (direct), then a second server and HAProxy in front
of both (balanced); the consumer runs throughout (a run ends once its
messages are delivered). Extra server flags: SERVER_FLAGS="--workers 1".
Needs haproxy (scripts/ensure-tools.sh haproxy) and the local Redis,
RabbitMQ and PostgreSQL (scripts/ensure-services.sh starts them).
USAGE
}
PERSIST=true
ROOMS=20
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --persist)
      [[ "${2:-}" == true || "${2:-}" == false ]] || { echo "balancer.sh: --persist must be true or false, got '${2:-}'" >&2; exit 2; }
      PERSIST="$2"; shift 2 ;;
    --rooms)
      [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "balancer.sh: --rooms needs a number >= 1, got '${2:-}'" >&2; exit 2; }
      ROOMS="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "balancer.sh: unknown flag $1" >&2; usage >&2; exit 2 ;;
  esac
done
CLIENT_FLAGS=("$@")
read -ra SERVER_EXTRA <<<"${SERVER_FLAGS:-}"

cd "$(dirname "$0")/.."
NS="lb$$"
DB="chatflow_lb_$$"
PORT_A=18321 PORT_B=18322 PORT_LB=18320 STATS=127.0.0.1:18324 CONSUMER_METRICS=127.0.0.1:18323
out="results/balancer-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"

command -v haproxy >/dev/null || scripts/ensure-tools.sh haproxy
scripts/ensure-services.sh redis rabbitmq postgres
# Separate builds: `--bin` would narrow one build to that binary alone.
cargo build --release -q -p chatflow-server -p chatflow-consumer -p chatflow-client
cargo build --release -q -p chatflow-bench --bin chaosload
BIN="${CARGO_TARGET_DIR:-target}/release"
haproxy -c -q -f tuning/haproxy.cfg

export NAMESPACE="$NS" ROOMS DB_USER=postgres DB_NAME="$DB" ENABLE_PERSISTENCE="$PERSIST"
DB_USER=postgres DB_NAME="$DB" database/setup_database.sh >/dev/null

pids=()
cleanup() {
  set +e
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 100); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null; done
  wait 2>/dev/null
  "$BIN/chaosload" --delete-topology "$NS" --rooms "$ROOMS" --url x >/dev/null 2>&1
  redis-cli --scan --pattern "$NS:*" | xargs -r redis-cli del >/dev/null 2>&1
  psql -X -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1
}
trap cleanup EXIT

wait_health() { # PORT
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0
    sleep 0.1
  done
  echo "balancer.sh: no healthy server on $1 (see $out)" >&2
  return 1
}
start_server() { # NAME PORT
  # DRAIN_SECS=0: no balancer has to notice a stop at the end of a bench.
  DRAIN_SECS=0 "$BIN/chatflow-server" --bind "127.0.0.1:$2" --server-id "lb-$1" --api-bind off \
    "${SERVER_EXTRA[@]}" >"$out/server-$1.log" 2>&1 &
  pids+=($!)
  wait_health "$2"
}
stored() { psql -X -h 127.0.0.1 -U postgres -d "$DB" -Atc "select count(*) from messages"; }
# One run: NAME URL → its client report in $out/NAME.
run() {
  local name="$1" url="$2" before
  before=$(stored)
  echo "balancer.sh: $name run against $url" >&2
  "$BIN/chatflow-client" --url "$url" --rooms "$ROOMS" --progress off --no-metrics \
    -o "$out/$name" "${CLIENT_FLAGS[@]}" >"$out/$name.txt" 2>&1 \
    || { cat "$out/$name.txt" >&2; echo "balancer.sh: the $name run failed" >&2; return 1; }
  if [[ "$PERSIST" == true ]]; then
    local acked now
    acked=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['total']['acked'])" "$out/$name/summary.json")
    for _ in $(seq 1 60); do
      now=$(stored)
      (( now - before >= acked )) && break
      sleep 1
    done
    echo "$((now - before))" > "$out/$name.stored"
  fi
}

"$BIN/chatflow-consumer" --metrics-bind "$CONSUMER_METRICS" >"$out/consumer.log" 2>&1 &
pids+=($!)
start_server a "$PORT_A"
run direct "ws://127.0.0.1:$PORT_A"

start_server b "$PORT_B"
CHATFLOW_LB_BIND="127.0.0.1:$PORT_LB" CHATFLOW_LB_STATS_BIND="$STATS" \
  CHATFLOW_SERVER_1="127.0.0.1:$PORT_A" CHATFLOW_SERVER_2="127.0.0.1:$PORT_B" \
  haproxy -f tuning/haproxy.cfg -db >"$out/haproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  # Refused until HAProxy listens: not an error here (pipefail).
  ups=$({ curl -sf "http://$STATS/stats;csv" 2>/dev/null || true; } | awk -F, '$1 == "chatflow" && ($2 == "s1" || $2 == "s2") && $18 == "UP"' | wc -l)
  [[ "$ups" == 2 ]] && break
  sleep 0.1
done
[[ "$ups" == 2 ]] || { cat "$out/haproxy.log" >&2; echo "balancer.sh: HAProxy does not see both servers up" >&2; exit 1; }
run balanced "ws://127.0.0.1:$PORT_LB"
curl -sf "http://$STATS/stats;csv" > "$out/haproxy-stats.csv" || true

python3 - "$out" "$PERSIST" <<'EOF' | tee "$out/summary.txt"
import json, os, sys
out, persist = sys.argv[1], sys.argv[2] == "true"
def p99(stats):
    return f"{stats['p99']:.1f}" if stats else "-"
print(f"{'':28} {'msgs/s':>9} {'ack p99 ms':>11} {'delivery p99 ms':>16} {'acked':>8} {'failed':>7}" + (f" {'stored':>8}" if persist else ""))
for name, label in (("direct", "direct, one server"), ("balanced", "HAProxy, two servers")):
    r = json.load(open(os.path.join(out, name, "summary.json")))
    m = r["main"]
    line = f"{label:28} {m['throughput']:9.0f} {p99(m['ackLatencyMs']):>11} {p99(m['deliveryLatencyMs']):>16} {r['total']['acked']:8} {r['total']['failed']:7}"
    if persist:
        line += f" {open(os.path.join(out, name + '.stored')).read().strip():>8}"
    print(line)
EOF
echo "balancer: details in $out"
