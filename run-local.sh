#!/usr/bin/env bash
# The main job on one machine: build in release and run chatflow-server in
# the foreground with the in-process (memory) broker. Ctrl-C stops it
# gracefully (clients get a 1001 close).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: ./run-local.sh [chatflow-server flags...]

Builds the workspace in release mode and runs chatflow-server in the
foreground on 127.0.0.1:8080 with --broker memory. Extra flags go to the
server (see: target/release/chatflow-server --help), e.g.
  ./run-local.sh --bind 127.0.0.1:9000 --workers 2
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

cd "$(dirname "$0")"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -p chatflow-server
exec target/release/chatflow-server --bind 127.0.0.1:8080 --broker memory "$@"
