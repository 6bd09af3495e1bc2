#!/usr/bin/env bash
# Failover on clustered services (issue 13), on the local cluster of
# scripts/local-cluster.sh: a three-node RabbitMQ cluster, Redis master +
# replica + three Sentinels, a PostgreSQL primary + streaming replica.
#
# Two servers (RABBITMQ_HOSTS, REDIS_SENTINELS; server a also serves the
# read API from the replica, DB_READ_HOST), two consumer processes (the
# second a single-active-consumer standby) storing in the cluster's
# primary, and the chaosload recorder (window-1 senders over both servers,
# listeners in every room on both servers, resuming with ?since=). Then, in
# turn, each fault TRIALS times:
#   rabbit:   kill -9 the RabbitMQ node leading the first room's queue,
#             restart it after 10 s, wait until it has rejoined;
#   consumer: kill -9 the active consumer, restart it (it comes back as
#             the standby);
#   redis:    kill -9 the Redis master (Sentinel promotes the replica),
#             restart it (it comes back as a replica).
# Throughout, the read API answers from the replica and its lag is scraped.
#
# Verdict (exit status): every acked message stored exactly once and heard
# by every listener of its room, per-sender order kept at every listener,
# nothing failed, the API answered from the replica, which reported its
# lag. Measured: for each RabbitMQ node loss, the longest time a message
# waited for its ack (first attempt → ack) among those sent around the
# kill; for each consumer kill and Redis failover, the longest pause in
# broadcasts at any listener after it. Cleans up after itself (processes,
# queues, Redis keys, the database; the cluster too if it started it).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: bench/cluster.sh [--trials N] [--rate N] [--pause S] [--only rabbit|consumer|redis] [--keep-cluster]

  --trials N      each fault this many times (default 1)
  --rate N        messages per second offered by the recorder (default 100)
  --pause S       seconds of steady load between faults (default 8)
  --only F        only this fault (default: all three)
  --keep-cluster  leave the local cluster running at the end (it is
                  stopped only if this script started it)
Needs scripts/local-cluster.sh's services (it starts them: ~1 minute).
One trial of each takes about 3 minutes.
USAGE
}
TRIALS=1 RATE=100 PAUSE=8 ONLY="" KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --trials) TRIALS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --pause) PAUSE="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --keep-cluster) KEEP=1; shift ;;
    *) echo "cluster.sh: unknown flag $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$ONLY" in ""|rabbit|consumer|redis) ;; *) echo "cluster.sh: --only takes rabbit, consumer or redis, not $ONLY" >&2; exit 2 ;; esac
[[ "$TRIALS" =~ ^[1-9][0-9]*$ ]] || { echo "cluster.sh: --trials must be a positive integer, not $TRIALS" >&2; exit 2; }

cd "$(dirname "$0")/.."
CLUSTER=scripts/local-cluster.sh
ROOMS=2
NS="cluster$$"
DB="chatflow_cluster_$$"
PORT_A=18401 PORT_B=18402 API_A=18403
METRICS_1=127.0.0.1:18404 METRICS_2=127.0.0.1:18405
out="results/cluster-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
stop_file="$out/stop"

cargo build --release -q -p chatflow-server -p chatflow-consumer
cargo build --release -q -p chatflow-bench --bin chaosload
BIN=target/release

started_cluster=0
if ! "$CLUSTER" status >/dev/null 2>&1; then
  started_cluster=1
fi
"$CLUSTER" up
eval "$("$CLUSTER" env)"
export RABBITMQ_HOSTS REDIS_SENTINELS REDIS_MASTER_NAME
export NAMESPACE="$NS" ROOMS DB_USER=postgres DB_NAME="$DB" DB_HOST DB_PORT ENABLE_PERSISTENCE=true
DB_USER=postgres DB_NAME="$DB" DB_HOST="$DB_HOST" DB_PORT="$DB_PORT" database/setup_database.sh >/dev/null

consumer_1="" consumer_2="" server_a="" server_b="" recorder="" scraper=""
start_consumer() { # N → pid in consumer_N
  local bind="METRICS_$1"
  "$BIN/chatflow-consumer" --metrics-bind "${!bind}" --consumer-id "cluster-consumer-$1" \
    >>"$out/consumer-$1.log" 2>&1 &
  printf -v "consumer_$1" '%s' "$!"
}
start_server() { # NAME PORT API → pid in $started
  "$BIN/chatflow-server" --bind "127.0.0.1:$2" --server-id "cluster-$1" --api-bind "$3" \
    --no-pin --workers 1 --drain-secs 2 >>"$out/server-$1.log" 2>&1 &
  started=$!
}
wait_port() { # PORT
  for _ in $(seq 1 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.2
  done
  echo "cluster.sh: nothing listens on $1 (see $out)" >&2
  return 1
}
cleanup() {
  set +e
  [[ -n "$recorder" ]] && kill "$recorder" 2>/dev/null
  [[ -n "$scraper" ]] && kill "$scraper" 2>/dev/null
  for pid in "$server_a" "$server_b" "$consumer_1" "$consumer_2" "$recorder"; do
    [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null
  done
  # Nodes a failed step left down come back before the clean-up needs them.
  "$CLUSTER" start rabbit1 >/dev/null 2>&1; "$CLUSTER" start rabbit2 >/dev/null 2>&1
  "$CLUSTER" start rabbit3 >/dev/null 2>&1
  "$CLUSTER" start redis1 >/dev/null 2>&1; "$CLUSTER" start redis2 >/dev/null 2>&1
  "$CLUSTER" wait >/dev/null 2>&1
  "$BIN/chaosload" --delete-topology "$NS" --rooms "$ROOMS" --url x >/dev/null 2>&1
  master=$(redis-cli -p 26391 sentinel get-master-addr-by-name "$REDIS_MASTER_NAME" 2>/dev/null | tail -1)
  redis-cli -p "${master:-6391}" --scan --pattern "$NS:*" | xargs -r redis-cli -p "${master:-6391}" del >/dev/null 2>&1
  psql -X -q -h "$DB_HOST" -p "$DB_PORT" -U postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1
  if [[ "$started_cluster" == 1 && "$KEEP" == 0 ]]; then
    "$CLUSTER" down >/dev/null 2>&1
  fi
}
trap cleanup EXIT

step() { echo "$(date +%H:%M:%S) $*" | tee -a "$out/steps.log"; }
now_ms() { date +%s%3N; }

start_consumer 1
sleep 3 # consumer 1 registers first: it is the active one, 2 the standby
start_consumer 2
DB_READ_HOST="$DB_READ_HOST" DB_READ_PORT="$DB_READ_PORT" start_server a "$PORT_A" "127.0.0.1:$API_A"
server_a=$started
start_server b "$PORT_B" off; server_b=$started
wait_port "$PORT_A"; wait_port "$PORT_B"; wait_port "$API_A"

# The read API during the run: a page of room 1 from the replica and the
# replica's lag, every second.
(
  while true; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$API_A/api/rooms/1/messages?limit=10" || true)
    lag=$(curl -s "http://127.0.0.1:$API_A/metrics" | awk '$1 == "chatflow_api_db_replica_lag_seconds" {print $2}')
    echo "$(now_ms) $code ${lag:-none}"
    sleep 1
  done
) >"$out/replica.txt" 2>/dev/null &
scraper=$!

step "recorder: $RATE msgs/s over ws://127.0.0.1:$PORT_A and :$PORT_B, $ROOMS rooms"
"$BIN/chaosload" --url "ws://127.0.0.1:$PORT_A" --url "ws://127.0.0.1:$PORT_B" \
  --rooms "$ROOMS" --senders 8 --rate "$RATE" --stop-file "$stop_file" --retry-window-secs 120 \
  --db-host "$DB_HOST" --db-port "$DB_PORT" --db-name "$DB" --out "$out" \
  >"$out/recorder.out" 2>"$out/recorder.log" &
recorder=$!
sleep "$PAUSE"

: >"$out/faults.txt"
fault() { # KIND → a line "KIND unix_ms" in faults.txt
  echo "$1 $(now_ms)" >>"$out/faults.txt"
}
rabbit_leader() { # the local-cluster name (rabbitN) of the node leading room 1's first queue
  rabbitmqctl -q -n cf-rabbit1@localhost list_queues name leader 2>/dev/null \
    | awk -v q="$NS.room.1.0" '$1 == q {print $2}' | sed -n 's/^cf-\(rabbit[0-9]\)@.*/\1/p'
}
active_consumer=1
for trial in $(seq 1 "$TRIALS"); do
  if [[ -z "$ONLY" || "$ONLY" == rabbit ]]; then
    node=$(rabbit_leader)
    if [[ -z "$node" ]]; then node=rabbit1; fi
    step "trial $trial: kill -9 RabbitMQ $node (leader of $NS.room.1.0); restart after 10 s"
    fault rabbit
    "$CLUSTER" kill "$node" >>"$out/steps.log"
    sleep 10
    "$CLUSTER" start "$node" >>"$out/steps.log"
    "$CLUSTER" wait >>"$out/steps.log"
    step "trial $trial: $node rejoined"
    sleep "$PAUSE"
  fi
  if [[ -z "$ONLY" || "$ONLY" == consumer ]]; then
    step "trial $trial: kill -9 the active consumer ($active_consumer); restart it as the standby"
    fault consumer
    pid_var="consumer_$active_consumer"
    kill -9 "${!pid_var}"
    sleep "$PAUSE"
    start_consumer "$active_consumer"
    active_consumer=$(( 3 - active_consumer ))
    sleep 2
  fi
  if [[ -z "$ONLY" || "$ONLY" == redis ]]; then
    step "trial $trial: kill -9 the Redis master; restart it (as a replica) after 8 s"
    fault redis
    "$CLUSTER" kill redis-master >>"$out/steps.log"
    sleep 8
    "$CLUSTER" start redis1 >>"$out/steps.log" 2>&1 || true
    "$CLUSTER" start redis2 >>"$out/steps.log" 2>&1 || true
    "$CLUSTER" wait >>"$out/steps.log"
    sleep "$PAUSE"
  fi
done

step "stopping the load; the recorder settles and checks the database"
touch "$stop_file"
wait "$recorder" || true
recorder=""
kill "$scraper" 2>/dev/null || true
scraper=""
primary_rows=$(psql -X -qAt -h "$DB_HOST" -p "$DB_PORT" -U postgres -d "$DB" -c "SELECT count(*) FROM messages")
replica_rows=""
for _ in $(seq 1 50); do
  replica_rows=$(psql -X -qAt -h "$DB_READ_HOST" -p "$DB_READ_PORT" -U postgres -d "$DB" -c "SELECT count(*) FROM messages" 2>/dev/null || true)
  [[ "$replica_rows" == "$primary_rows" ]] && break
  sleep 0.2
done

# Failover gaps, from the recorder's events and the fault times.
python3 - "$out/events.csv" "$out/faults.txt" >"$out/gaps.txt" <<'PY'
import sys
acks, heard = [], []
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if f[0] == "ack":
        acks.append((int(f[1]), int(f[2])))
    elif f[0] == "heard":
        heard.append(int(f[1]))
heard.sort()
faults = [(k, int(t)) for k, t in (line.split() for line in open(sys.argv[2]))]
for i, (kind, t) in enumerate(faults):
    # Each fault's window ends where the next fault begins.
    end = faults[i + 1][1] if i + 1 < len(faults) else t + 60000
    if kind == "rabbit":
        # Messages first sent from 1 s before the kill to 10 s after it:
        # the longest wait for an ack among them.
        waits = [lat for at, lat in acks if t - 1000 <= at - lat <= min(t + 10000, end)]
        print(f"rabbit {max(waits) if waits else -1}")
    else:
        # The longest pause between broadcasts heard, from the kill on.
        after = [h for h in heard if t <= h <= end]
        before = [h for h in heard if h < t]
        points = ([before[-1]] if before else [t]) + after
        gap = max((b - a for a, b in zip(points, points[1:])), default=-1)
        print(f"{kind} {gap}")
PY

line="$(cat "$out/recorder.out")"
verdict=PASS
for field in missing duplicate-rows broadcasts-missing order-violations failed; do
  value=$(awk -v f="$field" '{for (i = 1; i < NF; i++) if ($i == f) print $(i + 1)}' <<<"$line")
  [[ "${value:-1}" == 0 ]] || { verdict=FAIL; echo "cluster: $field ${value:-?}" >&2; }
done
answered=$(awk '$2 == 200' "$out/replica.txt" | wc -l)
lag_seen=$(awk '$3 != "none"' "$out/replica.txt" | wc -l)
(( answered > 0 )) || { verdict=FAIL; echo "cluster: the API never answered from the replica" >&2; }
(( lag_seen > 0 )) || { verdict=FAIL; echo "cluster: the replica's lag was never reported" >&2; }
[[ "$replica_rows" == "$primary_rows" ]] || { verdict=FAIL; echo "cluster: replica has $replica_rows rows, primary $primary_rows" >&2; }
lags=$(awk '$3 != "none" {print $3}' "$out/replica.txt" | sort -g | awk '{a[NR]=$1} END {if (NR) printf "min %s median %s max %s", a[1], a[int((NR+1)/2)], a[NR]}')
summary() { # KIND → "a, b, c ms"
  awk -v k="$1" '$1 == k {printf "%s%s", sep, $2; sep=", "}' "$out/gaps.txt"
}
echo "cluster: $line"
echo "cluster: rabbit node loss → longest ack wait ms: $(summary rabbit)"
echo "cluster: consumer kill → longest broadcast pause ms: $(summary consumer)"
echo "cluster: redis master kill → longest broadcast pause ms: $(summary redis)"
echo "cluster: replica: $answered API answers, rows $replica_rows/$primary_rows, lag seconds $lags"
echo "cluster: verdict $verdict (details: $out)"
[[ "$verdict" == PASS ]]
