#!/usr/bin/env bash
# Profiles chatflow-server (or any running process) with perf and draws an
# inferno flamegraph: attaches to a PID, or starts the server from the
# `profiling` cargo profile itself (through run-server.sh), records while
# you drive load, and stops it again.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tuning/profile.sh [options] PID
       tuning/profile.sh [options] --server [-- chatflow-server flags...]

  PID                 record a running process (start the server for it with
                      PROFILE=profiling ./run-server.sh: release code plus
                      line tables and frame pointers)
  --server            build the `profiling` profile, start it with
                      PROFILE=profiling ./run-server.sh (flags after --), record
                      while you run load against it, then stop it (SIGTERM)
  --seconds N         how long to record (default 20)
  --call-graph MODE   fp (default): frame pointers, cheap, but glibc has none,
                      so a stack through libc (send, recv, memcpy, malloc)
                      stops there with no Rust caller; dwarf: perf copies 16 KiB
                      of stack per sample and unwinds it with DWARF, so those
                      stacks reach their Rust callers (perf.data grows ~100x;
                      the sampling rate drops to 199 Hz to keep it in bounds)
  --freq HZ           samples per second (default 999, 199 with dwarf)
  --out DIR           where perf.data, stacks.folded and flamegraph.svg go
                      (default results/profile-<time>)

Needs perf (Debian: linux-perf) and inferno (installed with
`cargo install inferno` when missing). At the end it prints the share of
the time in stacks that do not reach a thread's start: truncated ones
(rerun with --call-graph dwarf if it is large).
USAGE
}

die() { echo "profile.sh: $*" >&2; exit 2; }
seconds=20 mode=fp freq="" out="" pid="" server=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --seconds) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || die "--seconds needs a whole number of seconds >= 1, got '${2:-}'"; seconds="$2"; shift 2 ;;
    --call-graph) [[ "${2:-}" == fp || "${2:-}" == dwarf ]] || die "--call-graph must be fp or dwarf, got '${2:-}'"; mode="$2"; shift 2 ;;
    --freq) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || die "--freq needs samples per second >= 1, got '${2:-}'"; freq="$2"; shift 2 ;;
    --out) [[ -n "${2:-}" ]] || die "--out needs a directory"; out="$2"; shift 2 ;;
    --server) server=1; shift ;;
    --) shift; break ;;
    -*) die "unknown flag $1 (see --help)" ;;
    *) [[ -z "$pid" && "$1" =~ ^[0-9]+$ ]] || die "expected one PID, got '$1'"; pid="$1"; shift ;;
  esac
done
server_flags=("$@")
(( server )) && [[ -n "$pid" ]] && die "give a PID or --server, not both"
(( server )) || [[ -n "$pid" ]] || { usage >&2; exit 2; }
(( server )) || (( ${#server_flags[@]} == 0 )) || die "flags after -- are for --server"
[[ -n "$freq" ]] || { [[ "$mode" == dwarf ]] && freq=199 || freq=999; }

cd "$(dirname "$0")/.."
out="${out:-results/profile-$(date +%Y%m%d-%H%M%S)}"
command -v perf >/dev/null || { echo "profile.sh: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v inferno-collapse-perf >/dev/null || ! command -v inferno-flamegraph >/dev/null; then
  command -v cargo >/dev/null || { echo "profile.sh: inferno is missing and there is no cargo to install it" >&2; exit 1; }
  echo "profile.sh: installing inferno (cargo install inferno)" >&2
  cargo install inferno
fi
mkdir -p "$out"

started=""
stop_server() {
  if [[ -n "$started" ]] && kill -0 "$started" 2>/dev/null; then
    kill -TERM "$started" 2>/dev/null || true
    wait "$started" 2>/dev/null || true
  fi
}
trap stop_server EXIT
if (( server )); then
  target="${CARGO_TARGET_DIR:-target}"
  # Always build: run-server.sh builds only when the binary is missing,
  # and a stale profiling binary would profile old code.
  cargo build --profile profiling -p chatflow-server
  PROFILE=profiling ./run-server.sh "${server_flags[@]}" >"$out/server.log" 2>&1 &
  started=$!
  # run-server.sh execs the server: the PID is the server's once it runs.
  for _ in $(seq 1 100); do
    [[ "$(readlink "/proc/$started/exe" 2>/dev/null)" == */chatflow-server ]] && break
    kill -0 "$started" 2>/dev/null || { cat "$out/server.log" >&2; echo "profile.sh: the server exited" >&2; exit 1; }
    sleep 0.1
  done
  pid="$started"
  echo "profile.sh: server $pid from $target/profiling (log: $out/server.log); drive load now" >&2
  sleep 2
fi
kill -0 "$pid" 2>/dev/null || { echo "profile.sh: no process $pid" >&2; exit 1; }
exe="$(readlink "/proc/$pid/exe" 2>/dev/null || echo '?')"
case "$exe" in
  */profiling/*) ;;
  *) echo "profile.sh: note: $exe is not a profiling build (PROFILE=profiling ./run-server.sh starts one); symbols may lack lines" >&2 ;;
esac

call_graph=(-g)
[[ "$mode" == dwarf ]] && call_graph=(--call-graph dwarf,16384)
echo "profile.sh: recording $pid ($exe) for $seconds s, $freq Hz, call graph $mode" >&2
perf record -F "$freq" "${call_graph[@]}" -p "$pid" -o "$out/perf.data" -- sleep "$seconds" 2>"$out/perf-record.log" \
  || { cat "$out/perf-record.log" >&2; echo "profile.sh: perf record failed (kernel.perf_event_paranoid? run as root)" >&2; exit 1; }
stop_server
perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf > "$out/stacks.folded"
[[ -s "$out/stacks.folded" ]] || { echo "profile.sh: no samples (was the process busy? see $out/perf-record.log)" >&2; exit 1; }
inferno-flamegraph --title "$(basename "$exe") pid $pid, $seconds s, $mode call graph" \
  < "$out/stacks.folded" > "$out/flamegraph.svg"

# A stack that reaches a thread's start (start_thread for spawned threads,
# __libc_start_main for main) is whole; one that does not was cut short,
# typically at a libc function without frame pointers.
# The folded counts are sample weights (the event's period), so this is a
# share of the recorded time.
samples="$(grep -o '([0-9]* samples)' "$out/perf-record.log" | tr -dc '0-9')"
awk -v samples="${samples:-?}" '
     { n = $NF; total += n; if ($0 !~ /(^|;)(start_thread|__libc_start_main|__libc_start_call_main|_start)(;| )/) cut += n }
     END { if (total) printf "profile.sh: %s samples; %.0f%% of the time is in stacks that do not reach a thread start (truncated)\n", samples, 100 * cut / total }' \
  "$out/stacks.folded"
echo "flamegraph: $out/flamegraph.svg"
