#!/usr/bin/env bash
# Full-path load run (issues 4 and 5): consumer + server (release) on this
# machine with RabbitMQ, Redis and PostgreSQL, chatflow-client driving it,
# queue depth sampled every 2 s, and rows stored checked against acks.
# Then (issue 14), with the server and consumer stopped, brokerceiling
# measures RabbitMQ alone in the same topology with the client's number of
# messages in flight (--threads × --window, as the client's summary.json
# records them) for about as long as the client's main phase, and prints
#   broker ceiling: X msgs/s at N in flight; full path / ceiling = R
# (R: the client's main-phase acked msgs/s over the ceiling's confirmed
# msgs/s) and how long RabbitMQ has been up (ratios compare within one
# broker lifetime). The ceiling is also measured once before the full path
# starts (CEILING_BEFORE_SECS, 30 s), and X is the mean of the two: a box
# that drifts during the run moves the two apart, and the line after says
# by how much and what R is against each. CEILING=after measures only
# after; CEILING=false skips both; CEILING_SECS=S sets the length of both.
#
#   bench/full_path.sh [PERSIST=true|false] -- CLIENT FLAGS...
#   PERSIST=false bench/full_path.sh -- -n 500000 -w 1
#   PERSIST=true  bench/full_path.sh -- -n 500000 -w 16
#   PRESENCE=off  bench/full_path.sh -- -n 100000 -w 1   (the server reads
#                 PRESENCE from its environment: presence on vs. off)
set -euo pipefail
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/.."
[[ "${1:-}" == "--" ]] && shift
CEILING="${CEILING:-true}"
case "$CEILING" in true|after|false) ;; *) echo "full_path.sh: CEILING must be true, after or false, not $CEILING" >&2; exit 2 ;; esac
PERSIST="${PERSIST:-true}"
PORT="${PORT:-18280}"
NS="bench-$(date +%s)"
DB="${DB_NAME:-chatflow}"
ulimit -n "$(ulimit -Hn)"

# The value of a client flag in "$@" (-t N, -tN, --threads N,
# --threads=N; the last one wins), or its default:
#   client_flag SHORT LONG DEFAULT "$@"   (SHORT may be "")
client_flag() {
  local short="$1" long="$2" value="$3"
  shift 3
  while (( $# )); do
    if [[ "$1" == "$long" || ( -n "$short" && "$1" == "$short" ) ]]; then
      (( $# >= 2 )) && value="$2" && shift
    elif [[ "$1" == "$long="* ]]; then
      value="${1#*=}"
    elif [[ -n "$short" && "$1" == "$short"?* ]]; then
      value="${1#"$short"}"
    fi
    shift
  done
  echo "$value"
}
# The client's shape from its flags (with the client's defaults), for the
# ceiling before the run; the one after reads it from summary.json.
threads=$(client_flag -t --threads 64 "$@")
window=$(client_flag -w --window 1 "$@")
rooms=$(client_flag "" --rooms 20 "$@")
in_flight=$((threads * window))
# The server and consumer take their rooms from ROOMS, the client from
# --rooms. Apart, the server answers 404 to the client's connections to a
# room past ROOMS, or the client never sends to some of the consumer's
# queues, and the cleanup misses queues: ROOMS follows --rooms, and a
# ROOMS that says otherwise stops the run before anything starts.
if [[ -n "${ROOMS:-}" && "$ROOMS" != "$rooms" ]]; then
  echo "full_path.sh: ROOMS=$ROOMS but the client's --rooms is $rooms: pass the client --rooms $ROOMS, or leave ROOMS unset (it follows --rooms)" >&2
  exit 2
fi
export ROOMS="$rooms"
# BIN=DIR runs binaries built elsewhere (e.g. a copy of an earlier commit's,
# for a before/after comparison); it must hold chatflow-server,
# chatflow-consumer, chatflow-client and queue_depth (and brokerceiling,
# else this tree's is built).
target="${CARGO_TARGET_DIR:-target}"
if [[ -z "${BIN:-}" ]]; then
  cargo build --release -q -p chatflow-server -p chatflow-consumer -p chatflow-client
  cargo build --release -q -p chatflow-consumer --example queue_depth
  cargo build --release -q -p chatflow-bench --bin brokerceiling
  mkdir -p "$target/release/bench-bin"
  cp "$target"/release/{chatflow-server,chatflow-consumer,chatflow-client,brokerceiling} \
    "$target/release/examples/queue_depth" "$target/release/bench-bin/"
  BIN="$target/release/bench-bin"
fi
CEIL="$BIN/brokerceiling"
if [[ "$CEILING" != false && ! -x "$CEIL" ]]; then
  cargo build --release -q -p chatflow-bench --bin brokerceiling
  CEIL="$target/release/brokerceiling"
fi
scripts/ensure-services.sh redis rabbitmq postgres
DB_USER=postgres DB_NAME="$DB" database/setup_database.sh >/dev/null
before=$(psql -h 127.0.0.1 -U postgres -d "$DB" -Atc "select count(*) from messages")
out="results/full-path-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"

# The CPU budget of one brokerceiling run (NAME.json, sampled into
# NAME-cpu.jsonl) over its publishing window (a brokerceiling from before
# the window was reported has none: 0 to 0, which the report says has no
# samples):   ceiling_budget NAME LABEL
ceiling_budget() {
  local from to confirmed
  read -r from to confirmed < <(python3 -c "
import json, sys
p = json.load(open(sys.argv[1]))['publish']
print(p.get('startedAtUnixS', 0), p.get('endedAtUnixS', 0), p['confirmed'])" "$out/$1.json")
  python3 bench/cpu_budget.py report "$out/$1-cpu.jsonl" --from "$from" --to "$to" \
    --messages "$confirmed" --phase "the ceiling run" --json "$out/$1-cpu-budget.json" \
    | sed "1s/^/$2: /" | tee -a "$out/client.txt" || true
}
# One brokerceiling run at the client's shape ($rooms, $in_flight) for
# SECS seconds into NAME.json and NAME.log, with every process's CPU
# sampled into NAME-cpu.jsonl (PostgreSQL and Redis too: what else took the
# box while the broker was alone). Fails as brokerceiling does.
#   run_ceiling NAME SECS
run_ceiling() {
  local publishers="${PUBLISHERS:-1}" status=0
  (( publishers > in_flight )) && publishers=$in_flight
  python3 bench/cpu_budget.py sample "$out/$1-cpu.jsonl" beam.smp brokerceiling postgres redis-server &
  sampler=$!
  "$CEIL" --rooms "$rooms" --in-flight "$in_flight" --publishers "$publishers" --seconds "$2" --json \
      >"$out/$1.json" 2>"$out/$1.log" || status=$?
  kill -TERM "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  return "$status"
}
if [[ "$CEILING" == true ]]; then
  # The broker alone first, before anything of ours runs: its own
  # namespace, deleted when it ends.
  run_ceiling ceiling-before "${CEILING_SECS:-${CEILING_BEFORE_SECS:-30}}" \
    || { echo "full_path.sh: the ceiling before the run failed (see $out/ceiling-before.log); the ratio uses the one after" >&2
         rm -f "$out/ceiling-before.json"; }
fi

NAMESPACE="$NS" ENABLE_PERSISTENCE="$PERSIST" DB_USER=postgres DB_NAME="$DB" \
  "$BIN"/chatflow-consumer --metrics-bind 127.0.0.1:18283 >"$out/consumer.log" 2>&1 &
consumer=$!
sleep 2
NAMESPACE="$NS" DRAIN_SECS=0 "$BIN"/chatflow-server --bind "127.0.0.1:$PORT" >"$out/server.log" 2>&1 &
server=$!
cleanup() {
  [[ -n "${cleaned:-}" ]] && return 0
  cleaned=1
  kill "$server" "$consumer" 2>/dev/null || true
  wait "$server" "$consumer" 2>/dev/null || true
  [[ -n "${depth:-}" ]] && kill "$depth" 2>/dev/null || true
  # Queues and exchanges over one AMQP connection when brokerceiling is
  # built (seconds; a rabbitmqctl call per queue takes minutes on a loaded
  # machine), else queue by queue.
  if [[ -x "$CEIL" ]] && "$CEIL" --delete-topology "$NS" --rooms "$ROOMS" >/dev/null 2>&1; then
    :
  else
    for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$NS\."); do
      rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
    done
  fi
  # Its exchanges too (rabbitmqctl cannot delete those): chaosload's
  # topology deletion, when it is built.
  if [[ -x "$target/release/chaosload" ]]; then
    "$target/release/chaosload" --delete-topology "$NS" --rooms "$ROOMS" --url x >/dev/null 2>&1 || true
  fi
  # The rooms' history streams (the consumer appends every broadcast), the
  # server's presence (it would expire within seconds anyway) and its sent
  # log (one key per message, expiring after the dedup window). A
  # failing scan says so (its error once hid a cleanup that never ran)
  # but does not stop the rest of the cleanup.
  for keys in history presence sent; do
    redis-cli --scan --pattern "$NS:$keys:*" | xargs -r redis-cli del >/dev/null || true
  done
}
# The CPU sampler of whichever phase is running (its own step, since
# cleanup runs once, before the ceiling phase starts its sampler).
stop_sampler() {
  [[ -n "${sampler:-}" ]] && kill -TERM "$sampler" 2>/dev/null || true
}
trap 'cleanup; stop_sampler' EXIT
sleep 1
NAMESPACE="$NS" "$BIN"/queue_depth --seconds 3600 --interval 2 >"$out/queue_depth.txt" 2>&1 &
depth=$!
# Every component's CPU and context switches, sampled through the run and
# reported per message over the client's main phase (bench/cpu_budget.py).
python3 bench/cpu_budget.py sample "$out/cpu.jsonl" \
  chatflow-server chatflow-consum chatflow-client beam.smp redis-server postgres &
sampler=$!
"$BIN"/chatflow-client --url "ws://127.0.0.1:$PORT" --progress off -o "$out/client" "$@" | tee "$out/client.txt"
kill -INT "$depth" 2>/dev/null || true
kill -TERM "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
if [[ -f "$out/client/summary.json" ]]; then
  read -r main_from main_to main_acked < <(python3 -c "
import json, sys
from datetime import datetime
d = json.load(open(sys.argv[1]))
start = datetime.fromisoformat(d['startedAt'].replace('Z', '+00:00')).timestamp()
begin = start + d['warmup']['wallSeconds']
print(begin, begin + d['main']['wallSeconds'], d['main']['acked'])" "$out/client/summary.json")
  python3 bench/cpu_budget.py report "$out/cpu.jsonl" --from "$main_from" --to "$main_to" \
    --messages "$main_acked" --json "$out/cpu-budget.json" | tee -a "$out/client.txt" || true
fi
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
if [[ "$CEILING" != false ]]; then
  # The broker alone, on a machine the full path no longer loads: stop the
  # server and consumer and delete their queues first.
  cleanup
  # The shape the client ran, from its summary.json; should it have none
  # (a client that failed early), the one from its flags above.
  main_secs=10
  full_rate=""
  if [[ -f "$out/client/summary.json" ]]; then
    read -r threads window rooms main_secs full_rate < <(python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
s, m = d['settings'], d['main']
print(s['threads'], s['window'], s['rooms'], m['wallSeconds'], m['throughput'])" "$out/client/summary.json")
  fi
  in_flight=$((threads * window))
  secs="${CEILING_SECS:-$(python3 -c "import sys; print(max(5, min(600, round(float(sys.argv[1])))))" "$main_secs")}"
  if run_ceiling ceiling "$secs"; then
    python3 - "$out/ceiling.json" "$in_flight" "$full_rate" "$out/ceiling-before.json" <<'PY' | tee -a "$out/client.txt"
import json, os, sys
c = json.load(open(sys.argv[1]))
n, full, before_path = sys.argv[2], sys.argv[3], sys.argv[4]
after = c["publish"]["perSecond"]
before, mismatch = None, None
if os.path.exists(before_path) and os.path.getsize(before_path) > 0:
    b = json.load(open(before_path))
    # Only a run of the same shape (the client's flags said one thing and
    # its summary another, say) goes into the mean.
    if (b["inFlight"], b["rooms"]) == (c["inFlight"], c["rooms"]):
        before = b["publish"]["perSecond"]
    else:
        mismatch = (f"  (the ceiling before the run had {b['inFlight']} in flight over {b['rooms']} rooms, "
                    f"the one after {c['inFlight']} over {c['rooms']}: not averaged)")
# Bracketed: the mean of the two, so a box that sped up or slowed down
# during the run is not charged to one side.
ceiling = (before + after) / 2 if before else after
def over(rate):
    return f"{float(full) / rate:.2f}" if full and rate > 0 else "n/a (no client summary)"
l = c["publish"]["confirmLatencyMs"]
print(f"broker ceiling: {ceiling:.0f} msgs/s at {n} in flight; full path / ceiling = {over(ceiling)}")
if mismatch:
    print(mismatch)
if before:
    drift = 100 * (after - before) / before
    print(f"  (the broker alone before the run: {before:.0f} msgs/s, after it: {after:.0f}, {drift:+.0f}%; "
          f"full path over each: {over(before)} and {over(after)})")
shown = f"full path {float(full):.0f} msgs/s in the client's main phase; " if full else ""
print(f"  ({shown}the broker alone after the run for {c['publish']['seconds']:.0f} s: confirm mean {l['mean']:.1f} ms, "
      f"p50 {l['p50']:.1f} ms, p99 {l['p99']:.1f} ms; consumed {c['consume']['perSecond']:.0f} msgs/s; {sys.argv[1]})")
PY
    # A ceiling is only comparable with others from the same broker
    # lifetime: on one box a RabbitMQ restart raised it 25–43%
    # (results/broker-ratio.md, "Third box").
    up=$(timeout 20 rabbitmqctl -q eval 'element(1, erlang:statistics(wall_clock)) div 1000.' 2>/dev/null || echo "?")
    echo "  (RabbitMQ up $up s)" | tee -a "$out/client.txt"
    # RabbitMQ's own cost per message alone, beside its cost in the full
    # path above, before the run and after it.
    [[ -s "$out/ceiling-before.json" ]] && ceiling_budget ceiling-before "broker alone before the run"
    ceiling_budget ceiling "broker alone after the run"
  else
    echo "broker ceiling: brokerceiling failed (see $out/ceiling.log)" | tee -a "$out/client.txt"
  fi
fi
echo "report: $out"
