#!/usr/bin/env bash
# Drain ratio (issue 14): how fast the consumer drains a backlog into Redis
# and PostgreSQL, against how fast RabbitMQ alone delivers the same backlog
# to consumers that only ack, in one command. Each round runs both, one
# after the other on the same broker and machine:
#   brokerceiling --drain MESSAGES --in-flight IN_FLIGHT --rooms ROOMS
#   drain --messages MESSAGES --rooms ROOMS [DRAIN FLAGS...]
# (the consumer's drain benchmark: consumer/examples/drain.rs), and the
# CPU and context switches per message of every process over each drain's
# own window (bench/cpu_budget.py). Rounds alternate, so a machine that
# drifts moves both; the summary gives each side's median and range and
# the ratio's.
#
#   bench/drain_ratio.sh [-- DRAIN FLAGS...]
#   ROUNDS=3 MESSAGES=200000 ROOMS=20 IN_FLIGHT=1024 bench/drain_ratio.sh
#   bench/drain_ratio.sh -- --no-rollups     (what the rollups cost)
#
# BIN=DIR runs binaries built elsewhere (it must hold brokerceiling and
# drain); DB_NAME picks the database the consumer stores into (default
# chatflow: the rows stay, as a consumer's would). Everything else each
# run declares it deletes, also when it fails.
set -euo pipefail
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/.."
[[ "${1:-}" == "--" ]] && shift
ROUNDS="${ROUNDS:-3}" MESSAGES="${MESSAGES:-200000}" ROOMS="${ROOMS:-20}" IN_FLIGHT="${IN_FLIGHT:-1024}"
for var in ROUNDS MESSAGES ROOMS IN_FLIGHT; do
  [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || { echo "drain_ratio.sh: $var must be a positive integer, not '${!var}'" >&2; exit 2; }
done
DB="${DB_NAME:-chatflow}"
ulimit -n "$(ulimit -Hn)"
target="${CARGO_TARGET_DIR:-target}"
if [[ -z "${BIN:-}" ]]; then
  cargo build --release -q -p chatflow-bench --bin brokerceiling
  cargo build --release -q -p chatflow-consumer --example drain
  mkdir -p "$target/release/bench-bin"
  cp "$target/release/brokerceiling" "$target/release/examples/drain" "$target/release/bench-bin/"
  BIN="$target/release/bench-bin"
fi
for b in brokerceiling drain; do
  [[ -x "$BIN/$b" ]] || { echo "drain_ratio.sh: no $BIN/$b" >&2; exit 2; }
done
scripts/ensure-services.sh redis rabbitmq postgres
DB_USER=postgres DB_NAME="$DB" database/setup_database.sh >/dev/null
out="results/drain-ratio-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
sampler=""
stop_sampler() {
  if [[ -n "$sampler" ]]; then
    kill -TERM "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sampler=""
  fi
}
trap stop_sampler EXIT

# The CPU per message of every sampled process over a run's drain window:
# startedAtUnixS..endedAtUnixS of the JSON's object at KEY ("" for the
# top level), as bench/cpu_budget.py reports it.
budget() { # SAMPLES JSON KEY PHASE OUT
  read -r from to < <(python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
if sys.argv[2]:
    d = d[sys.argv[2]]
print(d['startedAtUnixS'], d['endedAtUnixS'])" "$2" "$3")
  python3 bench/cpu_budget.py report "$1" --from "$from" --to "$to" \
    --messages "$MESSAGES" --phase "$4" --json "$5" || true
}

# The broker's age, since its rates depend on it (results/broker-ratio.md,
# "Third box").
up=$(timeout 20 rabbitmqctl -q eval 'element(1, erlang:statistics(wall_clock)) div 1000.' 2>/dev/null || echo "?")
echo "drain ratio: $ROUNDS rounds of $MESSAGES messages, $ROOMS rooms ($((ROOMS * 5)) queues), broker alone at $IN_FLIGHT in flight; consumer flags: ${*:-(none)}; RabbitMQ up $up s; results in $out"
for round in $(seq 1 "$ROUNDS"); do
  r="$out/round-$round"
  python3 bench/cpu_budget.py sample "$r-ceiling-cpu.jsonl" beam.smp brokerceiling &
  sampler=$!
  "$BIN"/brokerceiling --drain "$MESSAGES" --in-flight "$IN_FLIGHT" --rooms "$ROOMS" --json \
    >"$r-ceiling.json" 2>"$r-ceiling.log" || { cat "$r-ceiling.log" >&2; exit 1; }
  stop_sampler
  ceiling=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['drain']['perSecond']))" "$r-ceiling.json")
  echo "round $round: broker alone drains $ceiling msgs/s"
  budget "$r-ceiling-cpu.jsonl" "$r-ceiling.json" drain "the broker alone's drain" "$r-ceiling-budget.json" | sed 's/^/  /'

  python3 bench/cpu_budget.py sample "$r-consumer-cpu.jsonl" beam.smp drain postgres redis-server &
  sampler=$!
  DB_USER=postgres DB_NAME="$DB" "$BIN"/drain --messages "$MESSAGES" --rooms "$ROOMS" \
    --json "$r-consumer.json" "$@" >"$r-consumer.log" 2>&1 || { cat "$r-consumer.log" >&2; exit 1; }
  stop_sampler
  consumer=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['perSecond']))" "$r-consumer.json")
  echo "round $round: the consumer drains $consumer msgs/s into Redis and PostgreSQL; ratio $(python3 -c "print(f'{$consumer / $ceiling:.2f}')")"
  grep -E '^(batches|stored)' "$r-consumer.log" | sed 's/^/  /'
  budget "$r-consumer-cpu.jsonl" "$r-consumer.json" "" "the consumer's drain" "$r-consumer-budget.json" | sed 's/^/  /'
done

python3 - "$out" "$ROUNDS" <<'EOF' | tee "$out/summary.txt"
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
ceil = [json.load(open(f"{out}/round-{i}-ceiling.json"))["drain"]["perSecond"] for i in range(1, rounds + 1)]
cons = [json.load(open(f"{out}/round-{i}-consumer.json"))["perSecond"] for i in range(1, rounds + 1)]
ratio = [c / b for c, b in zip(cons, ceil)]
def line(name, xs, fmt):
    print(f"{name:<14} median {fmt(statistics.median(xs))}  range {fmt(min(xs))}–{fmt(max(xs))}")
print(f"summary over {rounds} alternating rounds:")
line("broker alone", ceil, lambda x: f"{x:,.0f} msgs/s")
line("consumer", cons, lambda x: f"{x:,.0f} msgs/s")
line("ratio", ratio, lambda x: f"{x:.2f}")
json.dump({"rounds": rounds, "brokerAlonePerSecond": ceil, "consumerPerSecond": cons, "ratio": ratio},
          open(f"{out}/summary.json", "w"), indent=2)
EOF
echo "report: $out"
