#!/usr/bin/env bash
# Makes sure the local services ChatFlow needs are up: starts each one that
# is not answering on its port, installing it from Debian's packages first
# if it is missing. Idempotent; quiet when everything already runs.
#
#   scripts/ensure-services.sh [redis] [rabbitmq] [postgres]   (default: all)
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/ensure-services.sh [redis] [rabbitmq] [postgres]

Starts (installing from Debian packages if needed) each named service that
is not answering on 127.0.0.1: Redis 6379, RabbitMQ 5672 (guest/guest),
PostgreSQL 5432 (trust auth for local connections). Default: all three.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name="$1" port="$2" seconds="$3"
  for _ in $(seq 1 $((seconds * 4))); do
    port_open "$port" && return 0
    sleep 0.25
  done
  echo "ensure-services: $name did not come up on port $port within ${seconds}s" >&2
  return 1
}

apt_updated=0
install() {
  if [[ "$apt_updated" == 0 ]]; then
    echo "ensure-services: apt-get update" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  echo "ensure-services: installing $*" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  port_open 6379 && return 0
  command -v redis-server >/dev/null || install redis-server
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port Redis 6379 20
}

ensure_rabbitmq() {
  if ! port_open 5672; then
    command -v rabbitmq-server >/dev/null || install rabbitmq-server
    # RabbitMQ inherits this shell's descriptor limit (often 1,024), which
    # caps its connections and queue files: lift it to the hard limit (a
    # subshell, so only the broker gets it).
    (ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; rabbitmq-server -detached)
    wait_port RabbitMQ 5672 90
  fi
  # The port opens before the broker accepts work; wait until it answers.
  for _ in $(seq 1 120); do
    rabbitmqctl -q await_startup >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "ensure-services: RabbitMQ did not finish starting" >&2
  return 1
}

ensure_postgres() {
  port_open 5432 && return 0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    install postgresql
  fi
  local version
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  # Local connections are trusted (a development and CI machine).
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q "chatflow: trust local" "$hba"; then
    sed -i '1i # chatflow: trust local\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port PostgreSQL 5432 60
}

services=("$@")
[[ ${#services[@]} -gt 0 ]] || services=(redis rabbitmq postgres)
for service in "${services[@]}"; do
  case "$service" in
    redis) ensure_redis ;;
    rabbitmq) ensure_rabbitmq ;;
    postgres) ensure_postgres ;;
    *) echo "ensure-services: unknown service '$service' (redis, rabbitmq, postgres)" >&2; exit 2 ;;
  esac
done
