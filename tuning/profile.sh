#!/usr/bin/env bash
# Profiles a running chatflow process with perf and draws a flamegraph.
# Build with `cargo build --profile profiling` first (line tables; frame
# pointers are on in every build, see .cargo/config.toml).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tuning/profile.sh PID [SECONDS] [OUT_DIR]

Records PID with `perf record -F 999 -g` for SECONDS (default 20), then
writes OUT_DIR/perf.data, OUT_DIR/stacks.folded and OUT_DIR/flamegraph.svg
(default OUT_DIR: results/profile-<time>). Needs perf and inferno
(`cargo install inferno`).
USAGE
}
case "${1:-}" in -h|--help|"") usage; [[ -n "${1:-}" ]]; exit $? ;; esac

pid="$1"; seconds="${2:-20}"
out="${3:-results/profile-$(date +%Y%m%d-%H%M%S)}"
command -v perf >/dev/null || { echo "profile.sh: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
command -v inferno-collapse-perf >/dev/null || { echo "profile.sh: inferno is not installed (cargo install inferno)" >&2; exit 1; }
mkdir -p "$out"
perf record -F 999 -g -p "$pid" -o "$out/perf.data" -- sleep "$seconds"
perf script -i "$out/perf.data" | inferno-collapse-perf > "$out/stacks.folded"
inferno-flamegraph < "$out/stacks.folded" > "$out/flamegraph.svg"
echo "flamegraph: $out/flamegraph.svg"
