#!/usr/bin/env bash
# Endurance run (issue 12): the full path (consumer with persistence, one
# server, RabbitMQ, Redis, PostgreSQL) under an open-loop load — constant
# arrival at --rate messages/s for --duration — with the resident memory of
# every process sampled every 30 s. Ends with throughput and ack p99 per
# minute (from the client's per-message CSV, latency from each message's
# intended send time) and every process's RSS at start and end.
#
#   bench/endurance.sh --rate 6000 --duration 30m [-- EXTRA CLIENT FLAGS]
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: bench/endurance.sh --rate N --duration D [--rooms N] [-- CLIENT FLAGS...]

  --rate N       messages per second offered (open loop; e.g. 80% of the
                 closed-loop maximum bench/full_path.sh -- -w 16 reports)
  --duration D   how long (30m, 90s, ...)
  --rooms N      rooms (default 20: 100 queues)
BIN=DIR runs binaries built elsewhere (chatflow-server, chatflow-consumer,
chatflow-client); default: this checkout's release build.
USAGE
}
RATE="" DURATION="" ROOMS=20
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --rate) RATE="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --rooms) ROOMS="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "endurance.sh: unknown flag $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -n "$RATE" && -n "$DURATION" ]] || { echo "endurance.sh: --rate and --duration are required" >&2; usage >&2; exit 2; }

cd "$(dirname "$0")/.."
NS="endure$$"
DB="chatflow_endure_$$"
PORT=18321 API=127.0.0.1:18322 METRICS=127.0.0.1:18323
out="results/endurance-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"
scripts/ensure-services.sh redis rabbitmq postgres
if [[ -z "${BIN:-}" ]]; then
  cargo build --release -q -p chatflow-server -p chatflow-consumer -p chatflow-client
  BIN=target/release
fi
[[ -x target/release/chaosload ]] || cargo build --release -q -p chatflow-bench --bin chaosload

export NAMESPACE="$NS" ROOMS DB_USER=postgres DB_NAME="$DB" ENABLE_PERSISTENCE=true
DB_USER=postgres DB_NAME="$DB" database/setup_database.sh >/dev/null

pids=() sampler=""
cleanup() {
  set +e
  [[ -n "$sampler" ]] && kill "$sampler" 2>/dev/null
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

"$BIN/chatflow-consumer" --metrics-bind "$METRICS" >"$out/consumer.log" 2>&1 &
consumer=$!; pids+=("$consumer")
sleep 2
"$BIN/chatflow-server" --bind "127.0.0.1:$PORT" --api-bind "$API" --server-id endurance \
  >"$out/server.log" 2>&1 &
server=$!; pids+=("$server")
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
sum_rss_kb() { local total=0; for p in $(pgrep -x "$1"); do total=$((total + $(rss_kb "$p"))); done; echo "$total"; }
sample() {
  echo "time,server_kb,consumer_kb,rabbitmq_kb,redis_kb,postgres_kb"
  while true; do
    echo "$(date +%s),$(rss_kb "$server"),$(rss_kb "$consumer"),$(sum_rss_kb beam.smp),$(sum_rss_kb redis-server),$(sum_rss_kb postgres)"
    sleep 30
  done
}
sample >"$out/rss.csv" &
sampler=$!

echo "endurance: open loop at $RATE msgs/s for $DURATION over $ROOMS rooms (details: $out)"
"$BIN/chatflow-client" --url "ws://127.0.0.1:$PORT" --rooms "$ROOMS" --rate "$RATE" \
  --duration "$DURATION" --progress off --api-url "http://$API" -o "$out/client" "$@" \
  | tee "$out/client.txt"
kill "$sampler"; sampler=""
python3 - "$out" <<'PY'
import csv, sys, collections
out = sys.argv[1]
per_min = collections.defaultdict(list)
with open(f"{out}/client/messages.csv") as f:
    rows = csv.DictReader(f)
    for r in rows:
        if r.get("statusCode") not in ("OK", "200", "ok"):
            continue
        # An RFC 3339 UTC time, e.g. 2026-12-02T02:59:49.030Z: its minute.
        t = r["timestamp"][:16]
        per_min[t].append(float(r["latencyMs"]))
print("minute (UTC)      msgs/s  ack p50 ms  ack p99 ms   (latency from the actual send, as the CSV has it)")
for t in sorted(per_min):
    v = sorted(per_min[t])
    p = lambda q: v[min(len(v) - 1, int(q * len(v)))]
    print(f"{t}  {len(v) / 60:7.0f}  {p(0.5):10.2f}  {p(0.99):10.2f}")
rss = list(csv.DictReader(open(f"{out}/rss.csv")))
if rss:
    first, last = rss[0], rss[-1]
    print("RSS (MB)      start      end")
    for k in ("server_kb", "consumer_kb", "rabbitmq_kb", "redis_kb", "postgres_kb"):
        print(f"{k[:-3]:10s} {int(first[k]) / 1024:8.1f} {int(last[k]) / 1024:8.1f}")
PY
