#!/usr/bin/env bash
# Starts chatflow-server on a host (EC2): checks the kernel tuning, raises
# the descriptor limit, builds if needed (the release profile, or with
# PROFILE=profiling the one tuning/profile.sh wants), and runs the server in
# the foreground with workers pinned one per core. Configuration comes from the
# environment (BIND, WORKERS, BROKER, RABBITMQ_HOST, REDIS_HOST, ROOMS, ...) or
# flags.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: ./run-server.sh [chatflow-server flags...]

Environment (each also a flag, see chatflow-server --help):
  BIND=0.0.0.0:8080   WORKERS=<cores>   BROKER=rabbitmq|memory|none
  RABBITMQ_HOST=127.0.0.1  RABBITMQ_USER/RABBITMQ_PASSWORD  REDIS_HOST=127.0.0.1
  ROOMS=20            MAX_CONNECTIONS=100000   SERVER_ID=<hostname-pid>
  API_BIND=0.0.0.0:8082 (or off)  DB_HOST/DB_PORT/DB_USER/DB_PASSWORD/DB_NAME  DB_POOL_SIZE=8
  DRAIN_SECS=10 (SIGTERM: /health 503 while serving this long, then stop)
  PING_INTERVAL_SECS=25  PONG_TIMEOUT_SECS=10  SUBSCRIPTION_GRACE_SECS=5
  LISTEN_BACKLOG=<net.core.somaxconn> (accept queue per worker listener)
This script only:
  PROFILE=release|profiling  which cargo profile to run (default release;
                      profiling = release + line tables + frame pointers,
                      for tuning/profile.sh)
Checks tuning (tuning/apply.sh --check), sets ulimit -n to the hard limit,
builds target/$PROFILE/chatflow-server if missing, then execs it.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

cd "$(dirname "$0")"
PROFILE="${PROFILE:-release}"
case "$PROFILE" in
  release|profiling) ;;
  *) echo "run-server.sh: PROFILE must be release or profiling, got '$PROFILE'" >&2; exit 2 ;;
esac
if ! tuning/apply.sh --check >/dev/null 2>&1; then
  echo "run-server.sh: warning: host is not tuned (see: tuning/apply.sh --check; fix: sudo tuning/apply.sh)" >&2
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "run-server.sh: descriptor limit $(ulimit -n)" >&2
bin="${CARGO_TARGET_DIR:-target}/$PROFILE/chatflow-server"
if [[ ! -x "$bin" ]]; then
  cargo build --profile "$PROFILE" -p chatflow-server
fi
exec "$bin" "$@"
