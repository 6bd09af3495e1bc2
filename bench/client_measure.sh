#!/usr/bin/env bash
# Issue-3 client measurements: starts a release chatflow-server on loopback
# (2 workers), runs chatflow-client against it with the given flags, prints
# the client's summary lines plus the CPU seconds of client and server.
#
#   bench/client_measure.sh [--broker none|memory] [-- CLIENT FLAGS...]
#   bench/client_measure.sh --broker none -- -n 500000 -t 64 -w 1 --no-delivery
#   bench/client_measure.sh --broker none -- -n 5000000 -t 64 -w 32 --no-delivery
#   bench/client_measure.sh --broker memory -- -n 1000000 --seed 42
set -euo pipefail
cd "$(dirname "$0")/.."
broker=none
while [[ $# -gt 0 ]]; do
  case "$1" in
    --broker) broker="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
port="${PORT:-18181}"
cargo build --release -q -p chatflow-server -p chatflow-client
ulimit -n "$(ulimit -Hn)"
DRAIN_SECS=0 target/release/chatflow-server --bind "127.0.0.1:$port" --workers 2 --broker "$broker" >/dev/null 2>&1 &
srv=$!
trap 'kill "$srv" 2>/dev/null || true; wait "$srv" 2>/dev/null || true' EXIT
sleep 0.5
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
before=$(ticks "$srv")
/usr/bin/time -f "client cpu: user %U s, sys %S s (wall %e s, %P)" \
  target/release/chatflow-client --url "ws://127.0.0.1:$port" --progress off "$@"
after=$(ticks "$srv")
echo "server cpu: $(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}') s (user+sys during the client run)"
kill -TERM "$srv"
wait "$srv" || true
trap - EXIT
