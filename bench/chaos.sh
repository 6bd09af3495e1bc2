#!/usr/bin/env bash
# Fault injection under load (issue 11): two servers and a consumer in a
# namespace and database of their own, the chaosload recorder (senders over
# both servers and every room, recording each acked id; listeners in every
# room on both servers, resuming with ?since= when they lose their
# connection), and one fault at a time:
#   kill -9 of the consumer, then a restart;
#   kill -9 of a server, then a restart;
#   SIGTERM of a server (drain), then a restart;
#   RabbitMQ stop_app / start_app;
#   a Redis restart;
#   PostgreSQL stop / start.
# It ends with the recorder's line — acked, stored exactly once, missing,
# duplicate rows, rows never acked, broadcasts missing at a listener — the
# dead-lettered count and a verdict. Loopback only; cleans up after itself
# (processes, queues, Redis keys, the database), also on failure.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: bench/chaos.sh [--rate N] [--pause SECONDS]

  --rate N        messages per second offered by the recorder (default 200)
  --pause S       seconds of steady load between faults (default 15)
Runs in about 4 minutes (at most 8); needs the local Redis, RabbitMQ and
PostgreSQL (scripts/ensure-services.sh starts them). It stops and restarts
those services: run it when nothing else on the machine uses them.
USAGE
}
RATE=200
PAUSE=15
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --rate) RATE="$2"; shift 2 ;;
    --pause) PAUSE="$2"; shift 2 ;;
    *) echo "chaos.sh: unknown flag $1" >&2; usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
ROOMS=2
NS="chaos$$"
DB="chatflow_chaos_$$"
PORT_A=18301 PORT_B=18302 CONSUMER_METRICS=127.0.0.1:18303
out="results/chaos-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
stop_file="$out/stop"
deadline=$(( $(date +%s) + 480 ))

scripts/ensure-services.sh redis rabbitmq postgres
# Two builds: `--bin` would narrow the first to chaosload alone.
cargo build --release -q -p chatflow-server -p chatflow-consumer
cargo build --release -q -p chatflow-bench --bin chaosload
BIN=target/release

export NAMESPACE="$NS" ROOMS DB_USER=postgres DB_NAME="$DB" ENABLE_PERSISTENCE=true
DB_USER=postgres DB_NAME="$DB" database/setup_database.sh >/dev/null

consumer_pid="" server_a_pid="" server_b_pid="" recorder_pid=""
start_consumer() {
  "$BIN/chatflow-consumer" --metrics-bind "$CONSUMER_METRICS" --consumer-id "chaos-consumer" \
    >>"$out/consumer.log" 2>&1 &
  consumer_pid=$!
}
start_server() { # NAME PORT → pid in $started
  "$BIN/chatflow-server" --bind "127.0.0.1:$2" --server-id "chaos-$1" --api-bind off \
    --no-pin --workers 1 --drain-secs 2 >>"$out/server-$1.log" 2>&1 &
  started=$!
}
wait_port() { # PORT
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "chaos.sh: nothing listens on $1 (see $out)" >&2
  return 1
}
restart_redis() {
  redis-cli shutdown nosave >/dev/null 2>&1 || true
  sleep 2
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
}
cleanup() {
  set +e
  [[ -n "$recorder_pid" ]] && kill "$recorder_pid" 2>/dev/null
  for pid in "$server_a_pid" "$server_b_pid" "$consumer_pid"; do
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null
  done
  # A server drains (2 s) and waits for its confirms before it exits.
  for _ in $(seq 1 150); do
    alive=0
    for pid in "$server_a_pid" "$server_b_pid" "$consumer_pid"; do
      [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && alive=1
    done
    (( alive )) || break
    sleep 0.1
  done
  for pid in "$server_a_pid" "$server_b_pid" "$consumer_pid" "$recorder_pid"; do
    [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null
  done
  # Services may be down if a fault step failed half-way.
  rabbitmqctl -q start_app >/dev/null 2>&1
  scripts/ensure-services.sh redis rabbitmq postgres >/dev/null 2>&1
  "$BIN/chaosload" --delete-topology "$NS" --rooms "$ROOMS" --url x >/dev/null 2>&1
  redis-cli --scan --pattern "$NS:*" | xargs -r redis-cli del >/dev/null 2>&1
  psql -X -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1
}
trap cleanup EXIT

step() { echo "$(date +%H:%M:%S) $*" | tee -a "$out/steps.log"; }
steady() {
  sleep "$PAUSE"
  if (( $(date +%s) > deadline - 60 )); then
    step "out of time: skipping the remaining faults"
    return 1
  fi
}

start_consumer
start_server a "$PORT_A"; server_a_pid=$started
start_server b "$PORT_B"; server_b_pid=$started
wait_port "$PORT_A"; wait_port "$PORT_B"
step "recorder: $RATE msgs/s over ws://127.0.0.1:$PORT_A and :$PORT_B, $ROOMS rooms"
"$BIN/chaosload" --url "ws://127.0.0.1:$PORT_A" --url "ws://127.0.0.1:$PORT_B" \
  --rooms "$ROOMS" --senders 8 --rate "$RATE" --stop-file "$stop_file" \
  --db-name "$DB" --out "$out" >"$out/recorder.out" 2>"$out/recorder.log" &
recorder_pid=$!

faults() {
  steady || return 0
  step "fault: kill -9 the consumer; restart after 3 s"
  kill -9 "$consumer_pid"; sleep 3; start_consumer
  steady || return 0
  step "fault: kill -9 server a; restart after 2 s"
  kill -9 "$server_a_pid"; sleep 2
  start_server a "$PORT_A"; server_a_pid=$started; wait_port "$PORT_A"
  steady || return 0
  step "fault: SIGTERM server b (drain); restart when it has exited"
  kill -TERM "$server_b_pid"; wait "$server_b_pid" 2>/dev/null || true
  start_server b "$PORT_B"; server_b_pid=$started; wait_port "$PORT_B"
  steady || return 0
  step "fault: RabbitMQ stop_app for 10 s"
  rabbitmqctl -q stop_app; sleep 10; rabbitmqctl -q start_app
  steady || return 0
  step "fault: Redis restart"
  restart_redis
  steady || return 0
  step "fault: PostgreSQL stop for 10 s"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main stop -m fast
  sleep 10
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  steady || return 0
}
faults
step "stopping the load; the recorder settles and checks the database"
touch "$stop_file"
wait "$recorder_pid" || true
recorder_pid=""
dead=$(rabbitmqctl -q list_queues name messages 2>/dev/null | awk -v q="$NS.dead-letter" '$1 == q {print $2}')
line="$(cat "$out/recorder.out") dead-lettered ${dead:-0}"
verdict=PASS
for field in missing duplicate-rows broadcasts-missing order-violations; do
  # Word by word: "missing" is also the end of "broadcasts-missing".
  value=$(awk -v f="$field" '{for (i = 1; i < NF; i++) if ($i == f) print $(i + 1)}' <<<"$line")
  [[ "${value:-1}" == 0 ]] || verdict=FAIL
done
echo "chaos: $line verdict $verdict (details: $out)"
[[ "$verdict" == PASS ]]
