#!/usr/bin/env bash
# Runs ChatFlow's clustered backing services on ONE machine, for tests and
# demos: a three-node RabbitMQ cluster, a Redis master and replica watched by
# three Sentinels, and a PostgreSQL primary with a streaming replica. They
# come from the Debian packages (no containers) and run beside the shared
# single services (RabbitMQ 5672, Redis 6379, PostgreSQL 5432), which this
# script never stops, reconfigures or connects to. Every data dir, log, pid
# file and config lives under ${CHATFLOW_CLUSTER_DIR:-/tmp/chatflow-cluster}.
#
#   scripts/local-cluster.sh up | down [--keep] | status | env | wait
#   scripts/local-cluster.sh kill NODE | stop NODE | start NODE
#
# `--help` says more; scripts/README.md has what `up` costs here (time, CPU,
# memory) and how long a Sentinel failover takes.
set -euo pipefail
umask 022

# ---------------------------------------------------------------- settings

BASE="${CHATFLOW_CLUSTER_DIR:-/tmp/chatflow-cluster}"
RABBIT_BIN=/usr/lib/rabbitmq/bin
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
MASTER_NAME=chatflow
# The CLI's own distribution ports, away from the shared node's CLI range
# (35672-35682) so our checks never compete with other engineers' rabbitmqctl.
CTL_DIST_PORTS=(25710 25730)
# `wait` and the readiness waits of `start`: a node restart, a failover.
WAIT_SECONDS=60
# A cold boot of three Erlang VMs on two shared cores takes ~20 s; 90 s means
# something is wrong, not slow.
RABBIT_BOOT_SECONDS=90

RABBIT_NODES=(rabbit1 rabbit2 rabbit3)
REDIS_NODES=(redis1 redis2)
SENTINEL_NODES=(sentinel1 sentinel2 sentinel3)
PG_NODES=(pg-primary pg-replica)
ALL_NODES=("${RABBIT_NODES[@]}" "${REDIS_NODES[@]}" "${SENTINEL_NODES[@]}" "${PG_NODES[@]}")
# Everything `down` may delete under the base directory: only these names, so
# a mistyped CHATFLOW_CLUSTER_DIR can never cost anyone else's files.
OWNED=("${ALL_NODES[@]}" rabbitmq-home pg-run)

usage() {
  cat <<'USAGE'
Usage: scripts/local-cluster.sh COMMAND [ARGS]

Runs clustered RabbitMQ, Redis (with Sentinel) and PostgreSQL (with a
streaming replica) on this machine, beside the shared single services, for
tests and demos. Every data dir, log, pid file and config lives under
$CHATFLOW_CLUSTER_DIR (default /tmp/chatflow-cluster). Run as root.

Commands:
  up             Start everything, creating it on first use, and wait until
                 each part is ready (RabbitMQ: 3 running nodes; Redis: the
                 replica's link up, all 3 Sentinels agree on the master and
                 know the replica and each other; PostgreSQL: the replica
                 streaming). Parts already running are left alone; a node left
                 by a crashed run is found and reused. Prints how long it took;
                 on failure names what did not come up and its log (exit 1).
  down [--keep]  Stop everything this script runs (also nodes a crashed run
                 left behind) and delete the data, so the next `up` is fresh;
                 --keep keeps the data (the next `up` restarts from it).
  status         One line per node (up/down, pid, port, role), RabbitMQ's
                 running nodes, the Sentinels' master. Exit 0 if everything is
                 up and replicating, 1 otherwise (the problems are listed).
  env            The settings the ChatFlow binaries take to use this cluster,
                 KEY=VALUE lines:  export $(scripts/local-cluster.sh env)
  kill NODE      kill -9 the node's OS processes; prints which pid and port.
  stop NODE      Stop the node gracefully.
  start NODE     Bring a stopped or killed node back and wait (up to 60 s)
                 until it is ready: a RabbitMQ node rejoins the cluster from
                 its data; a Redis node comes back as a replica of the master
                 the Sentinels name (never as a second master).
  wait           Wait up to 60 s until `status` would exit 0.

Nodes:
  rabbit1 rabbit2 rabbit3     cf-rabbitN@localhost: AMQP 127.0.0.1:570N,
                              distribution 2570N (guest/guest, quorum queues
                              replicate across the three)
  redis1 redis2               Redis on 127.0.0.1:6391 and :6392 (a fresh `up`
                              makes 6391 the master, 6392 its replica)
  redis-master redis-replica  whichever of redis1/redis2 is that now (the
                              Sentinels say); `kill` prints which one it was
  sentinel1 sentinel2 sentinel3
                              Sentinels on 26391-26393, master name
                              "chatflow", quorum 2, down after 1 s
  pg-primary pg-replica       PostgreSQL on 127.0.0.1:5441 (primary) and :5442
                              (hot standby), user postgres, trust auth

`rabbitmqctl -n cf-rabbit1@localhost cluster_status` works from any shell:
the nodes use a copy of the shared node's Erlang cookie.
Exit status: 0 success, 1 failure (the message names it), 2 usage error.
USAGE
}

# ---------------------------------------------------------------- helpers

info() { printf 'local-cluster: %s\n' "$*"; }
fail() {
  printf 'local-cluster: %s\n' "$*" >&2
  exit 1
}
usage_fail() {
  printf 'local-cluster: %s (see --help)\n' "$*" >&2
  exit 2
}

now_ms() {
  local t="${EPOCHREALTIME//[.,]/}"
  echo $((t / 1000))
}
seconds_since() { # START_MS -> "12.3"
  local ms=$(($(now_ms) - $1))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

# A killed daemon stays a zombie until this machine's init reaps it (~2 s
# here): that counts as gone.
is_zombie() { [[ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" == Z ]]; }
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null && ! is_zombie "$1"; }
comm_of() { cat "/proc/$1/comm" 2>/dev/null || true; }
# Padded with spaces so a caller can match " -flag value " safely.
cmdline_of() { printf ' %s ' "$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true)"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Pids of the processes holding a listening socket on PORT.
listener_pids() { ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -un || true; }
descendants() {
  local child
  for child in $(pgrep -P "$1" || true); do
    echo "$child"
    descendants "$child"
  done
}
wait_gone() { # PID SECONDS
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    alive "$1" || return 0
    sleep 0.1
  done
  ! alive "$1"
}

is_node() {
  local n
  for n in "${ALL_NODES[@]}"; do [[ "$n" == "$1" ]] && return 0; done
  return 1
}
node_port() {
  case "$1" in
    rabbit[1-3]) echo $((5700 + ${1#rabbit})) ;;
    redis[12]) echo $((6390 + ${1#redis})) ;;
    sentinel[1-3]) echo $((26390 + ${1#sentinel})) ;;
    pg-primary) echo 5441 ;;
    pg-replica) echo 5442 ;;
  esac
}
node_log() {
  case "$1" in
    rabbit*) echo "$BASE/$1/log/cf-$1@localhost.log" ;;
    redis*) echo "$BASE/$1/redis.log" ;;
    sentinel*) echo "$BASE/$1/sentinel.log" ;;
    pg-*) echo "$BASE/$1/postgres.log" ;;
  esac
}

# The main OS process of NODE, or nothing. The pid file is trusted only when
# the process behind it is still that node (pids get reused); a node whose
# pid file was lost (a crashed run, a deleted base dir) is found by its marker
# or by its port, so `up` reuses it and `down` stops it.
node_pid() {
  local node="$1" port pid
  port="$(node_port "$node")"
  case "$node" in
    rabbit*)
      pid="$(head -n 1 "$BASE/$node/pid" 2>/dev/null || true)"
      if is_rabbit_proc "$pid" "$node"; then echo "$pid" && return; fi
      for pid in $(pgrep -x beam.smp || true); do
        if is_rabbit_proc "$pid" "$node"; then echo "$pid" && return; fi
      done
      for pid in $(listener_pids "$port") $(listener_pids $((port + 20000))); do
        [[ "$(comm_of "$pid")" == beam.smp ]] && echo "$pid" && return
      done
      ;;
    redis* | sentinel*)
      pid="$(head -n 1 "$BASE/$node/${node%%[0-9]}.pid" 2>/dev/null || true)"
      if [[ -n "$pid" && "$(comm_of "$pid")" == redis-server && "$(cmdline_of "$pid")" == *":$port "* ]]; then
        echo "$pid" && return
      fi
      for pid in $(listener_pids "$port"); do
        [[ "$(comm_of "$pid")" == redis-server ]] && echo "$pid" && return
      done
      ;;
    pg-*)
      pid="$(head -n 1 "$BASE/$node/data/postmaster.pid" 2>/dev/null || true)"
      if [[ -n "$pid" && "$(comm_of "$pid")" == postgres &&
        "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$BASE/$node/data" ]]; then
        echo "$pid" && return
      fi
      # The postmaster is the listener whose parent is not a postgres.
      for pid in $(listener_pids "$port"); do
        [[ "$(comm_of "$pid")" == postgres ]] || continue
        [[ "$(comm_of "$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null)")" == postgres ]] && continue
        echo "$pid" && return
      done
      ;;
  esac
  return 0
}
# Our nodes carry "-chatflow_cluster_node rabbitN" on their command line (an
# Erlang init argument nothing reads): 3.10 names the node at run time, so
# the name itself is not on it.
is_rabbit_proc() {
  [[ -n "$1" && "$(comm_of "$1")" == beam.smp && "$(cmdline_of "$1")" == *" -chatflow_cluster_node $2 "* ]]
}

# A port held by something that is not this node: say who, instead of
# starting a node that cannot bind.
port_free_or_fail() { # NODE PORT...
  local node="$1" port pid
  shift
  for port in "$@"; do
    pid="$(listener_pids "$port" | head -n 1)"
    [[ -z "$pid" ]] && continue
    fail "cannot start $node: port $port is in use by pid $pid ($(comm_of "$pid"):$(cmdline_of "$pid" | cut -c1-80))"
  done
}

# ------------------------------------------------------------ RabbitMQ

rabbit_name() { echo "cf-$1@localhost"; }
# rabbitmqctl run directly (the /usr/sbin wrapper would `su rabbitmq`), with a
# HOME that holds the nodes' cookie. Without it (the base dir deleted under
# running nodes) the CLI's VM would crash; and it never leaves an
# erl_crash.dump in the caller's directory.
ctl() {
  [[ -s "$BASE/rabbitmq-home/.erlang.cookie" ]] || return 1
  HOME="$BASE/rabbitmq-home" RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-home/rabbitmq-env.conf" \
    ERL_CRASH_DUMP_SECONDS=0 \
    RABBITMQ_CTL_DIST_PORT_MIN="${CTL_DIST_PORTS[0]}" RABBITMQ_CTL_DIST_PORT_MAX="${CTL_DIST_PORTS[1]}" \
    timeout 60 "$RABBIT_BIN/rabbitmqctl" "$@"
}
# cluster_status --formatter json: the node names of one of its lists.
json_nodes() { grep -o "\"$1\":\[[^]]*\]" | grep -o 'cf-rabbit[0-9]@localhost' || true; }

prepare_rabbit_home() {
  local home="$BASE/rabbitmq-home"
  mkdir -p "$home"
  # The shared node's cookie (Debian keeps it in the rabbitmq user's HOME), so
  # a plain `rabbitmqctl -n cf-rabbit1@localhost ...` (which the wrapper runs
  # as that user) reaches our nodes too; a random one on a machine without it.
  if [[ ! -s "$home/.erlang.cookie" ]]; then
    if [[ -r /var/lib/rabbitmq/.erlang.cookie ]]; then
      cp /var/lib/rabbitmq/.erlang.cookie "$home/.erlang.cookie"
    else
      LC_ALL=C tr -dc '[:upper:]' </dev/urandom | head -c 32 >"$home/.erlang.cookie"
    fi
    chmod 400 "$home/.erlang.cookie"
  fi
  # No plugins (no management UI: it costs ~40 MB and a CPU tick per node).
  echo '[].' >"$home/enabled_plugins"
  # Read instead of /etc/rabbitmq/rabbitmq-env.conf (the shared node's name).
  : >"$home/rabbitmq-env.conf"
}

rabbit_write_config() {
  local node="$1" dir="$BASE/$1"
  mkdir -p "$dir/mnesia" "$dir/log"
  cat >"$dir/rabbitmq.conf" <<EOF
# $node of the local ChatFlow cluster (scripts/local-cluster.sh rewrites this).
listeners.tcp.default = 127.0.0.1:$(node_port "$node")
loopback_users = none
cluster_name = chatflow-local
# Modest: three nodes share a machine with the shared broker and the tests.
vm_memory_high_watermark.absolute = 512MiB
disk_free_limit.absolute = 100MB
# Quorum queues keep their write-ahead log in memory up to this size (default
# 512 MB per node).
raft.wal_max_size_bytes = 64000000
log.console = false
log.file.level = info
EOF
}

rabbit_start() {
  local node="$1" dir="$BASE/$1" port pid
  port="$(node_port "$node")"
  pid="$(node_pid "$node")"
  if [[ -n "$pid" ]]; then
    info "$node already running (pid $pid)"
    return 0
  fi
  port_free_or_fail "$node" "$port" $((port + 20000))
  rabbit_write_config "$node"
  rm -f "$dir/pid"
  (
    # Quorum queues hold a descriptor per segment: lift the limit (often
    # 1,024 in a shell) to the hard one, for this node only.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    unset ERL_FLAGS ERL_AFLAGS ERL_ZFLAGS
    export HOME="$BASE/rabbitmq-home" \
      RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-home/rabbitmq-env.conf" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/rabbitmq-home/enabled_plugins" \
      RABBITMQ_NODENAME="cf-$node@localhost" \
      RABBITMQ_DIST_PORT=$((port + 20000)) \
      RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
      RABBITMQ_MNESIA_BASE="$dir/mnesia" \
      RABBITMQ_LOG_BASE="$dir/log" \
      RABBITMQ_PID_FILE="$dir/pid" \
      ERL_EPMD_ADDRESS=127.0.0.1 \
      RABBITMQ_SCHEDULER_BIND_TYPE=u \
      RABBITMQ_MAX_NUMBER_OF_PROCESSES=131072
    # One scheduler and one dirty CPU scheduler each, unbound (the default
    # binds every VM's scheduler 1 to CPU 0) and never busy-waiting (3.10's
    # default, kept explicit): an idle node then costs well under 1% of a core.
    # Distribution on loopback only, as the shared node's.
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1 +SDcpu 1:1 +SDio 4 +sbwt none +sbwtdcpu none +sbwtdio none -kernel inet_dist_use_interface {127,0,0,1} -chatflow_cluster_node $node"
    cd "$dir"
    setsid "$RABBIT_BIN/rabbitmq-server" -detached </dev/null >>"$dir/startup.log" 2>&1
  ) 9>&- || fail "$node: rabbitmq-server did not start (see $dir/startup.log)"
  info "$node starting ($(rabbit_name "$node"), AMQP 127.0.0.1:$port)"
}

# The VM runs but the rabbit application does not, nor is it booting: a
# run stopped between `stop_app` and `start_app` of a join. (The boot state
# is "booting" before the node is reachable, so this never sees a boot.)
rabbit_app_stopped() {
  [[ "$(ctl -q -n "$(rabbit_name "$1")" eval '{rabbit:is_booting(), rabbit:is_running()}.' 2>/dev/null)" == "{false,false}" ]]
}

# Waits until each named node's AMQP port answers; fails at once, with the
# log's tail, when a node's VM is gone; starts the app of a node left with it
# stopped.
rabbit_wait_booted() {
  local start deadline node pending=("$@") left
  local -A probed=()
  start="$(now_ms)"
  deadline=$((start + RABBIT_BOOT_SECONDS * 1000))
  while ((${#pending[@]} > 0)); do
    left=()
    for node in "${pending[@]}"; do
      port_open "$(node_port "$node")" && continue
      # erl -detached forks the VM: give it a moment to appear.
      if [[ -z "$(node_pid "$node")" ]] && (($(now_ms) - start > 5000)); then
        tail -n 15 "$(node_log "$node")" "$BASE/$node/startup.log" >&2 2>/dev/null || true
        fail "$node: the Erlang VM exited while booting (log: $(node_log "$node"))"
      fi
      # Asked every 10 s (a CLI call costs ~1 s of CPU).
      if (($(now_ms) - ${probed[$node]:-$start} > 10000)); then
        probed[$node]="$(now_ms)"
        if rabbit_app_stopped "$node"; then
          info "$node: the VM runs with RabbitMQ stopped (an interrupted join?): start_app"
          ctl -q -n "$(rabbit_name "$node")" start_app >>"$BASE/$node/join.log" 2>&1 || true
        fi
      fi
      left+=("$node")
    done
    pending=("${left[@]}")
    ((${#pending[@]} == 0)) && break
    if (($(now_ms) > deadline)); then
      for node in "${pending[@]}"; do
        printf 'local-cluster: %s: AMQP port %s not answering (log: %s)\n' \
          "$node" "$(node_port "$node")" "$(node_log "$node")" >&2
      done
      fail "RabbitMQ did not boot within ${RABBIT_BOOT_SECONDS}s"
    fi
    sleep 0.5
  done
}

# A node that has never been part of the cluster (its first boot, or a crashed
# run stopped between boot and join) joins cf-rabbit1; a member is left alone
# (once started with its data it rejoins by itself).
rabbit_join() {
  local node="$1" name status out="$BASE/$1/join.log"
  name="$(rabbit_name "$node")"
  status="$(ctl -q -n "$name" cluster_status --formatter json 2>>"$out")" ||
    fail "$node: cluster_status failed (see $out, log: $(node_log "$node"))"
  if json_nodes disk_nodes <<<"$status" | grep -qx cf-rabbit1@localhost; then
    return 0
  fi
  # Checked before the reset, which would otherwise leave the node stopped.
  port_open "$(node_port rabbit1)" ||
    fail "$node cannot join the cluster: rabbit1 is not running (start rabbit1, or run up)"
  info "$node joining cf-rabbit1@localhost"
  {
    ctl -q -n "$name" stop_app &&
      ctl -q -n "$name" reset &&
      ctl -q -n "$name" join_cluster cf-rabbit1@localhost &&
      ctl -q -n "$name" start_app
  } >>"$out" 2>&1 || {
    ctl -q -n "$name" start_app >>"$out" 2>&1 || true
    grep -m 3 -E '^Error' "$out" >&2 || true
    fail "$node could not join cf-rabbit1@localhost (see $out, log: $(node_log "$node"))"
  }
}

# The cluster's running nodes, from the first node that answers.
rabbit_running() {
  local node out
  for node in "${RABBIT_NODES[@]}"; do
    port_open "$(node_port "$node")" || continue
    out="$(ctl -q -n "$(rabbit_name "$node")" cluster_status --formatter json 2>/dev/null)" || continue
    json_nodes running_nodes <<<"$out" | sort -u
    return 0
  done
  return 0
}

rabbit_stop() {
  local node="$1" pid
  pid="$(node_pid "$node")"
  [[ -z "$pid" ]] && return 0
  # SIGTERM (a clean stop in Erlang 25) when the CLI cannot reach the node,
  # e.g. its cookie went with a deleted base dir.
  if ctl -q -n "$(rabbit_name "$node")" stop >/dev/null 2>&1; then
    wait_gone "$pid" 60 || kill_tree "$pid" TERM
  else
    kill_tree "$pid" TERM
  fi
  wait_gone "$pid" 20 || kill_tree "$pid" KILL
}

# --------------------------------------------------------------- Redis

rcli() { # PORT ARGS...: raw replies, one per line
  local port="$1"
  shift
  timeout 5 redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null | tr -d '\r'
}
# Value after KEY in a flat key/value reply (SENTINEL MASTER, INFO as k:v).
kv() { awk -v k="$1" 'NR % 2 == 1 && $0 == k { getline; print; exit }'; }
info_field() { sed -n "s/^$1://p"; }

sentinel_master_of() { # PORT -> ip:port
  local out
  out="$(rcli "$1" sentinel get-master-addr-by-name "$MASTER_NAME")" || return 1
  [[ "$out" =~ ^([0-9.]+)$'\n'([0-9]+)$ ]] || return 1
  echo "${BASH_REMATCH[1]}:${BASH_REMATCH[2]}"
}
# The master the Sentinels name now; with every Sentinel down, the one their
# config files name (they rewrite it on a switch; the highest epoch wins); on
# a fresh cluster, 6391.
live_master() {
  local s
  for s in "${SENTINEL_NODES[@]}"; do
    sentinel_master_of "$(node_port "$s")" && return 0
  done
  return 1
}
current_master() {
  local s addr epoch best="" best_epoch=-1 f
  live_master && return 0
  for s in "${SENTINEL_NODES[@]}"; do
    f="$BASE/$s/sentinel.conf"
    [[ -f "$f" ]] || continue
    addr="$(awk -v m="$MASTER_NAME" '$1 == "sentinel" && $2 == "monitor" && $3 == m { print $4 ":" $5 }' "$f")"
    epoch="$(awk -v m="$MASTER_NAME" '$1 == "sentinel" && $2 == "config-epoch" && $3 == m { print $4 }' "$f")"
    if [[ -n "$addr" ]] && ((${epoch:-0} > best_epoch)); then
      best="$addr"
      best_epoch="${epoch:-0}"
    fi
  done
  echo "${best:-127.0.0.1:6391}"
}
redis_role() { rcli "$(node_port "$1")" info replication | info_field role; }
redis_node_of_port() { echo "redis$(($1 - 6390))"; }
other_redis() { [[ "$1" == redis1 ]] && echo redis2 || echo redis1; }

redis_start() {
  local node="$1" dir="$BASE/$1" port pid master other deadline
  port="$(node_port "$node")"
  pid="$(node_pid "$node")"
  if [[ -n "$pid" ]]; then
    info "$node already running (pid $pid)"
    return 0
  fi
  port_free_or_fail "$node" "$port"
  mkdir -p "$dir"
  master="$(current_master)"
  other="$(other_redis "$node")"
  # Running Sentinels still name this dead node the master while the other
  # node is up: their failover is under way. Started now it would be an empty
  # master (nothing is persisted) that the other copies, or a second master;
  # wait (a failover takes ~1-3 s here) until the other is promoted.
  if [[ "$(live_master)" == "127.0.0.1:$port" && -n "$(redis_role "$other")" ]]; then
    info "$node: the Sentinels still name it master; waiting for their failover to $other"
    deadline=$(($(now_ms) + 15000))
    while [[ "$(live_master)" == "127.0.0.1:$port" && "$(redis_role "$other")" != master ]] &&
      (($(now_ms) < deadline)); do
      sleep 0.1
    done
    master="$(current_master)"
  fi
  # Never a second master: with the other node up as master (promoted, the
  # Sentinels perhaps not yet told), this one is its replica.
  if [[ "$(redis_role "$other")" == master ]]; then
    master="127.0.0.1:$(node_port "$other")"
  fi
  # A replica's full sync leaves a dump.rdb that a restart would load: stale
  # data, and this cluster persists nothing.
  rm -f "$dir/dump.rdb"
  # Rewritten at each start (nothing here is state: the role comes from the
  # Sentinels, and the data is not persisted).
  cat >"$dir/redis.conf" <<EOF
# $node of the local ChatFlow cluster (scripts/local-cluster.sh rewrites this at each start).
port $port
bind 127.0.0.1
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
dir $dir
save ""
appendonly no
# Sync a (re)joining replica at once, not after the default 5 s.
repl-diskless-sync-delay 0
replica-announce-ip 127.0.0.1
EOF
  if [[ "${master##*:}" != "$port" ]]; then
    echo "replicaof ${master%:*} ${master##*:}" >>"$dir/redis.conf"
  fi
  (
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    redis-server "$dir/redis.conf" </dev/null >>"$dir/redis.log" 2>&1
  ) 9>&- || fail "$node did not start (log: $dir/redis.log)"
  if [[ "${master##*:}" == "$port" ]]; then
    info "$node started as master (127.0.0.1:$port)"
  else
    info "$node started as replica of $master (127.0.0.1:$port)"
  fi
}

sentinel_start() {
  local node="$1" dir="$BASE/$1" port pid master
  port="$(node_port "$node")"
  pid="$(node_pid "$node")"
  if [[ -n "$pid" ]]; then
    info "$node already running (pid $pid)"
    return 0
  fi
  port_free_or_fail "$node" "$port"
  mkdir -p "$dir"
  # Created once: a Sentinel rewrites its file with what it learns (its id,
  # the epoch, the current master, the other Sentinels), which a restart needs.
  if [[ ! -s "$dir/sentinel.conf" ]]; then
    master="$(current_master)"
    cat >"$dir/sentinel.conf" <<EOF
# $node of the local ChatFlow cluster; Sentinel rewrites this file.
port $port
bind 127.0.0.1
daemonize yes
pidfile $dir/sentinel.pid
logfile $dir/sentinel.log
dir $dir
sentinel resolve-hostnames no
sentinel announce-hostnames no
sentinel announce-ip 127.0.0.1
sentinel monitor $MASTER_NAME ${master%:*} ${master##*:} 2
# 1 s of silence marks the master down: failovers take ~2-4 s here.
sentinel down-after-milliseconds $MASTER_NAME 1000
sentinel failover-timeout $MASTER_NAME 5000
sentinel parallel-syncs $MASTER_NAME 1
EOF
  fi
  redis-server "$dir/sentinel.conf" --sentinel </dev/null >>"$dir/sentinel.log" 2>&1 9>&- ||
    fail "$node did not start (log: $dir/sentinel.log)"
  info "$node started (127.0.0.1:$port)"
}

redis_stop() {
  local node="$1" pid
  pid="$(node_pid "$node")"
  [[ -z "$pid" ]] && return 0
  rcli "$(node_port "$node")" shutdown nosave >/dev/null || true
  wait_gone "$pid" 10 || kill_tree "$pid" TERM
  wait_gone "$pid" 5 || kill_tree "$pid" KILL
}

# ---------------------------------------------------------- PostgreSQL

pgq() { # PORT SQL: unaligned tuples
  PGCONNECT_TIMEOUT=3 timeout 10 psql -h 127.0.0.1 -p "$1" -U postgres -d postgres -XAtqc "$2" 2>/dev/null
}
as_postgres() { runuser -u postgres -- "$@"; }

pg_create() {
  local node="$1" dir="$BASE/$1" data="$BASE/$1/data"
  rm -rf "$dir"
  mkdir -p "$dir" "$BASE/pg-run"
  chown postgres:postgres "$dir" "$BASE/pg-run"
  chmod 700 "$dir"
  if [[ "$node" == pg-primary ]]; then
    info "pg-primary: initdb"
    as_postgres "$PG_BIN/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
      --no-instructions >"$dir/initdb.log" 2>&1 || fail "pg-primary: initdb failed (see $dir/initdb.log)"
    # Trust on loopback and the socket, replication included (a test machine).
    cat >"$data/pg_hba.conf" <<'EOF'
local all         all                trust
local replication all                trust
host  all         all  127.0.0.1/32  trust
host  replication all  127.0.0.1/32  trust
EOF
    cat >>"$data/postgresql.conf" <<EOF

# ---- local ChatFlow cluster (scripts/local-cluster.sh); later lines win.
port = 5441
listen_addresses = '127.0.0.1'
unix_socket_directories = '$BASE/pg-run'
cluster_name = 'cf-pg-primary'
shared_buffers = 32MB
max_connections = 100
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
max_wal_size = 256MB
hot_standby = on
EOF
  else
    pgq 5441 'select 1' >/dev/null || fail "pg-replica needs pg-primary answering on 5441 (start pg-primary first)"
    # A slot, so a killed replica finds its WAL still there when it returns
    # (dropped first if a previous replica left it behind).
    pgq 5441 "select pg_drop_replication_slot(slot_name) from pg_replication_slots
              where slot_name = 'cf_pg_replica' and not active" >/dev/null || true
    info "pg-replica: pg_basebackup from pg-primary"
    as_postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p 5441 -U postgres -D "$data" -R -X stream \
      -C -S cf_pg_replica -c fast >"$dir/basebackup.log" 2>&1 ||
      fail "pg-replica: pg_basebackup failed (see $dir/basebackup.log)"
    cat >>"$data/postgresql.conf" <<'EOF'
# ---- the replica (its copy of the primary's file above).
port = 5442
cluster_name = 'cf-pg-replica'
hot_standby = on
hot_standby_feedback = on
EOF
  fi
  # The data dir is whole only once this marker exists: a run killed halfway
  # through initdb or the base backup is redone, not started.
  touch "$dir/.created"
}

pg_system_id() {
  as_postgres "$PG_BIN/pg_controldata" -D "$BASE/$1/data" 2>/dev/null | sed -n 's/^Database system identifier: *//p'
}

pg_start() {
  local node="$1" dir="$BASE/$1" data="$BASE/$1/data" port pid
  port="$(node_port "$node")"
  pid="$(node_pid "$node")"
  if [[ -n "$pid" ]]; then
    info "$node already running (pid $pid)"
    return 0
  fi
  port_free_or_fail "$node" "$port"
  # A replica copied from an earlier primary (whose data was since made anew)
  # could never stream from this one: copy it again.
  if [[ "$node" == pg-replica && -f "$dir/.created" && -f "$BASE/pg-primary/.created" ]] &&
    [[ "$(pg_system_id pg-replica)" != "$(pg_system_id pg-primary)" ]]; then
    info "pg-replica was copied from another primary: making it anew"
    rm -f "$dir/.created"
  fi
  [[ -f "$dir/.created" ]] || pg_create "$node"
  # A kill -9 leaves postmaster.pid behind. Postgres refuses to start while
  # that pid exists, a zombie not yet reaped included: wait for the reaping;
  # a pid since reused by another program makes the file stale.
  pid="$(head -n 1 "$data/postmaster.pid" 2>/dev/null || true)"
  if [[ -n "$pid" ]]; then
    for _ in $(seq 1 100); do is_zombie "$pid" || break; sleep 0.1; done
    is_zombie "$pid" && fail "$node: its killed postmaster (pid $pid) is still not reaped"
    [[ "$(comm_of "$pid")" == postgres ]] || rm -f "$data/postmaster.pid"
  fi
  as_postgres "$PG_BIN/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 -s start \
    </dev/null >>"$dir/pg_ctl.out" 2>&1 9>&- || {
    tail -n 10 "$dir/postgres.log" >&2 2>/dev/null || true
    fail "$node did not start (log: $dir/postgres.log)"
  }
  info "$node started (127.0.0.1:$port)"
}

pg_stop() {
  local node="$1" data="$BASE/$1/data" pid
  pid="$(node_pid "$node")"
  [[ -z "$pid" ]] && return 0
  if [[ -f "$data/postmaster.pid" ]]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 30 -s stop >/dev/null 2>&1 || true
  else
    kill -INT "$pid" 2>/dev/null || true # fast shutdown
  fi
  wait_gone "$pid" 30 || kill_tree "$pid" KILL
}

# --------------------------------------------------------- node control

kill_tree() { # PID SIGNAL: the process and everything below it
  local pids
  mapfile -t pids < <(
    echo "$1"
    descendants "$1"
  )
  kill "-$2" "${pids[@]}" 2>/dev/null || true
}

node_stop() {
  case "$1" in
    rabbit*) rabbit_stop "$1" ;;
    redis* | sentinel*) redis_stop "$1" ;;
    pg-*) pg_stop "$1" ;;
  esac
}

node_start() {
  case "$1" in
    rabbit*) rabbit_start "$1" ;;
    redis*) redis_start "$1" ;;
    sentinel*) sentinel_start "$1" ;;
    pg-*) pg_start "$1" ;;
  esac
}

# redis-master / redis-replica -> redis1 / redis2, as the Sentinels see it now
# (or, with no Sentinel answering, as the nodes report their own roles).
resolve_node() {
  local want="$1" master="" n
  case "$want" in
    redis-master | redis-replica)
      for n in "${SENTINEL_NODES[@]}"; do
        master="$(sentinel_master_of "$(node_port "$n")")" && break
      done
      if [[ -n "$master" ]]; then
        master="$(redis_node_of_port "${master##*:}")"
      else
        for n in "${REDIS_NODES[@]}"; do
          [[ "$(rcli "$(node_port "$n")" info replication | info_field role)" == master ]] && master="$n" && break
        done
      fi
      [[ -n "$master" ]] || fail "$want: no Sentinel answers and no Redis node reports itself master"
      if [[ "$want" == redis-master ]]; then echo "$master"; else other_redis "$master"; fi
      ;;
    *) echo "$want" ;;
  esac
}

# ------------------------------------------------------------- checks
#
# Each check adds what is wrong to PROBLEMS (naming the node and its log) and
# prints one row per node when VERBOSE=1; `status`, `wait`, `up` and `start`
# all judge readiness with these same functions.

PROBLEMS=()
VERBOSE=0
RUNNING=""
row() { # NODE STATE PID PORT DETAIL
  ((VERBOSE)) && printf '%-11s %-5s pid %-8s port %-6s %s\n' "$@"
  return 0
}
problem() { PROBLEMS+=("$*"); }
summary() { ((VERBOSE)) && printf '%s\n' "$*"; return 0; }

check_rabbit_node() { # uses RUNNING
  local node="$1" port pid
  port="$(node_port "$node")"
  pid="$(node_pid "$node")"
  if [[ -z "$pid" ]]; then
    row "$node" down - "$port" "not running"
    problem "$node is not running (log: $(node_log "$node"))"
  elif ! port_open "$port"; then
    row "$node" down "$pid" "$port" "VM up, AMQP port closed (booting or stuck)"
    problem "$node: AMQP port $port not answering (log: $(node_log "$node"))"
  elif [[ " $RUNNING " != *" $(rabbit_name "$node") "* ]]; then
    row "$node" up "$pid" "$port" "not among the cluster's running nodes"
    problem "$node is not among the cluster's running nodes (log: $(node_log "$node"))"
  else
    row "$node" up "$pid" "$port" "running, dist $((port + 20000))"
  fi
}

check_rabbit() {
  local before=${#PROBLEMS[@]} node count
  RUNNING="$(rabbit_running | tr '\n' ' ')"
  RUNNING="${RUNNING% }"
  for node in "${RABBIT_NODES[@]}"; do check_rabbit_node "$node"; done
  count="$(wc -w <<<"$RUNNING")"
  summary "rabbitmq    running nodes: ${RUNNING:-none} ($count/3)"
  ((count == 3)) || problem "RabbitMQ: $count of 3 nodes running"
  ((${#PROBLEMS[@]} == before))
}

# The master all answering Sentinels agree on (MASTER, as ip:port) and how
# many answered (AGREE); MASTER is empty if they disagree.
MASTER=""
AGREE=0
sentinel_consensus() {
  local s addr seen=""
  MASTER=""
  AGREE=0
  for s in "${SENTINEL_NODES[@]}"; do
    addr="$(sentinel_master_of "$(node_port "$s")")" || continue
    AGREE=$((AGREE + 1))
    if [[ -z "$seen" ]]; then
      seen="$addr"
    elif [[ "$seen" != "$addr" ]]; then
      seen="disagree"
    fi
  done
  [[ "$seen" != disagree ]] && MASTER="$seen"
  return 0
}

check_redis_node() { # uses MASTER
  local node="$1" port pid repl role
  port="$(node_port "$node")"
  pid="$(node_pid "$node")"
  if [[ -z "$pid" ]] || [[ "$(rcli "$port" ping)" != PONG ]]; then
    row "$node" down "${pid:--}" "$port" "not answering"
    problem "$node is not answering on $port (log: $(node_log "$node"))"
    return 0
  fi
  repl="$(rcli "$port" info replication)"
  role="$(info_field role <<<"$repl")"
  if [[ "$role" == master ]]; then
    row "$node" up "$pid" "$port" "master, $(info_field connected_slaves <<<"$repl") replica(s) connected"
    if [[ -n "$MASTER" && "${MASTER##*:}" != "$port" ]]; then
      problem "$node is a master but the Sentinels name $MASTER (a second master)"
    fi
  else
    local mport link
    mport="$(info_field master_port <<<"$repl")"
    link="$(info_field master_link_status <<<"$repl")"
    row "$node" up "$pid" "$port" "replica of 127.0.0.1:$mport, link $link"
    [[ "$link" == up ]] || problem "$node: replication link to $mport is $link (log: $(node_log "$node"))"
    if [[ -n "$MASTER" && "${MASTER##*:}" != "$mport" ]]; then
      problem "$node replicates 127.0.0.1:$mport but the Sentinels name $MASTER"
    fi
  fi
}

check_sentinel_node() { # uses MASTER
  local node="$1" port pid out flags others replicas want
  port="$(node_port "$node")"
  pid="$(node_pid "$node")"
  out="$(rcli "$port" sentinel master "$MASTER_NAME")" || out=""
  if [[ -z "$pid" || -z "$out" ]]; then
    row "$node" down "${pid:--}" "$port" "not answering"
    problem "$node is not answering on $port (log: $(node_log "$node"))"
    return 0
  fi
  flags="$(kv flags <<<"$out")"
  others="$(kv num-other-sentinels <<<"$out")"
  # name/flags of every replica it knows, "127.0.0.1:6392 slave" per line
  replicas="$(rcli "$port" sentinel replicas "$MASTER_NAME" |
    awk 'NR % 2 == 1 { k = $0; next } k == "name" { n = $0 } k == "flags" { print n, $0 }')"
  row "$node" up "$pid" "$port" "master $(kv ip <<<"$out"):$(kv port <<<"$out") ($flags), replicas: $(tr '\n' ',' <<<"$replicas" | sed 's/,$//'), $others other sentinels"
  [[ "$flags" == master ]] || problem "$node sees the master as: $flags"
  [[ "$others" == 2 ]] || problem "$node knows $others of the 2 other Sentinels"
  if [[ -n "$MASTER" ]]; then
    want="127.0.0.1:$(node_port "$(other_redis "$(redis_node_of_port "${MASTER##*:}")")")"
    grep -qx "$want slave" <<<"$replicas" || problem "$node does not see $want as a healthy replica"
  fi
}

check_redis() {
  local before=${#PROBLEMS[@]} node
  sentinel_consensus
  for node in "${REDIS_NODES[@]}"; do check_redis_node "$node"; done
  for node in "${SENTINEL_NODES[@]}"; do check_sentinel_node "$node"; done
  if [[ -n "$MASTER" ]]; then
    summary "sentinels   master $MASTER_NAME: $MASTER ($AGREE/3 sentinels answer)"
    ((AGREE == 3)) || problem "Sentinels: only $AGREE of 3 answer"
  else
    summary "sentinels   master $MASTER_NAME: unknown ($AGREE of 3 answer, and do not agree)"
    problem "Sentinels: no agreed master ($AGREE of 3 answer)"
  fi
  ((${#PROBLEMS[@]} == before))
}

check_pg_node() {
  local node="$1" port pid rec rep state lag replay
  port="$(node_port "$node")"
  pid="$(node_pid "$node")"
  if [[ -z "$pid" ]] || ! pg_isready -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -t 3; then
    row "$node" down "${pid:--}" "$port" "not accepting connections"
    problem "$node is not accepting connections on $port (log: $(node_log "$node"))"
    return 0
  fi
  rec="$(pgq "$port" 'select pg_is_in_recovery()')" || rec=""
  if [[ "$node" == pg-primary ]]; then
    row "$node" up "$pid" "$port" "primary"
    [[ "$rec" == f ]] || problem "pg-primary is in recovery (a standby?)"
  else
    # state|bytes not yet replayed|replay_lag, as the primary sees it
    rep="$(pgq 5441 "select state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn),
                     coalesce(replay_lag::text, '0')
                     from pg_stat_replication where application_name = 'cf-pg-replica'")" || rep=""
    IFS='|' read -r state lag replay <<<"$rep"
    row "$node" up "$pid" "$port" "replica, ${state:-not streaming}, lag ${lag:-?} B (replay_lag $replay)"
    [[ "$rec" == t ]] || problem "pg-replica is not in recovery (not a standby)"
    [[ "$state" == streaming ]] || problem "pg-replica is not streaming from pg-primary (log: $(node_log pg-replica))"
  fi
}

check_pg() {
  local before=${#PROBLEMS[@]} node
  for node in "${PG_NODES[@]}"; do check_pg_node "$node"; done
  ((${#PROBLEMS[@]} == before))
}

check_all() {
  local ok=0
  check_rabbit || ok=1
  check_redis || ok=1
  check_pg || ok=1
  return "$ok"
}

# Only the one node (for `start`): what it needs of the others is read first.
check_one() {
  local before=${#PROBLEMS[@]}
  case "$1" in
    rabbit*)
      RUNNING="$(rabbit_running | tr '\n' ' ')"
      check_rabbit_node "$1"
      ;;
    redis*)
      sentinel_consensus
      check_redis_node "$1"
      ;;
    sentinel*)
      sentinel_consensus
      check_sentinel_node "$1"
      ;;
    pg-*) check_pg_node "$1" ;;
  esac
  ((${#PROBLEMS[@]} == before))
}

# Retries CHECK until it passes; after SECONDS, names what is wrong and exits 1.
wait_for() { # WHAT SECONDS CHECK [ARGS]
  local what="$1" seconds="$2" deadline
  shift 2
  deadline=$(($(now_ms) + seconds * 1000))
  while :; do
    PROBLEMS=()
    VERBOSE=0
    "$@" && return 0
    (($(now_ms) >= deadline)) && break
    sleep 1
  done
  printf 'local-cluster: %s did not come up within %ss:\n' "$what" "$seconds" >&2
  printf '  %s\n' "${PROBLEMS[@]}" >&2
  exit 1
}

# ------------------------------------------------------------- commands

require_root() {
  [[ "$(id -u)" == 0 ]] || fail "run as root (PostgreSQL runs as the postgres user, via runuser)"
}

require_tools() {
  local t
  for t in redis-server redis-cli psql pg_isready ss runuser flock setsid timeout; do
    command -v "$t" >/dev/null || fail "missing $t (install redis-server, postgresql-client, iproute2, util-linux)"
  done
  [[ -x "$RABBIT_BIN/rabbitmq-server" ]] || fail "missing $RABBIT_BIN/rabbitmq-server (apt-get install rabbitmq-server)"
  [[ -x "$PG_BIN/initdb" ]] || fail "missing $PG_BIN/initdb (apt-get install postgresql-15, or set PG_BIN)"
}

# Serialises commands that change the cluster (two test processes running
# `up` at once: the second waits, then finds everything up). Every daemon is
# started with fd 9 closed, or it would hold the lock for its whole life.
lock() {
  mkdir -p "$BASE"
  chmod 755 "$BASE"
  exec 9>>"$BASE/.lock"
  flock -w 300 9 || fail "another local-cluster.sh holds $BASE/.lock"
}

prepare_base() {
  runuser -u postgres -- test -x "$BASE" ||
    fail "the postgres user cannot enter $BASE (set CHATFLOW_CLUSTER_DIR to a directory it can reach)"
  prepare_rabbit_home
}

cmd_up() {
  local start node master pid pids joined
  start="$(now_ms)"
  require_root
  require_tools
  lock
  prepare_base
  # The Erlang VMs boot in the background while the rest is set up.
  for node in "${RABBIT_NODES[@]}"; do rabbit_start "$node"; done
  pg_start pg-primary
  pg_start pg-replica
  # The master first (the one the Sentinels' files name, after a failover and
  # `down --keep`), so its replica connects at once.
  master="$(current_master)"
  master="$(redis_node_of_port "${master##*:}")"
  [[ "$master" == redis[12] ]] || master=redis1
  redis_start "$master"
  redis_start "$(other_redis "$master")"
  # Sentinels after the replica's link is up: each learns of the replica from
  # its first INFO to the master, the next one is 10 s later.
  wait_for "Redis replication" 20 check_one "$(other_redis "$master")"
  for node in "${SENTINEL_NODES[@]}"; do sentinel_start "$node"; done
  rabbit_wait_booted "${RABBIT_NODES[@]}"
  # A node among cf-rabbit1's running nodes is a member already (one CLI call,
  # ~1 s here, instead of one per node). The others join in parallel: both
  # join the running cf-rabbit1 (Mnesia serialises the schema changes), and
  # on a busy machine each join takes 10-20 s.
  RUNNING=" $(rabbit_running | tr '\n' ' ') "
  pids=()
  for node in rabbit2 rabbit3; do
    if [[ "$RUNNING" != *" $(rabbit_name "$node") "* ]]; then
      rabbit_join "$node" &
      pids+=($!)
    fi
  done
  joined=0
  for pid in "${pids[@]}"; do wait "$pid" || joined=1; done
  ((joined == 0)) || exit 1 # the failed join said why
  wait_for "the RabbitMQ cluster" 60 check_rabbit
  wait_for "Redis with Sentinel" 30 check_redis
  wait_for "PostgreSQL replication" 30 check_pg
  info "up in $(seconds_since "$start")s (RabbitMQ 5701-5703, Redis 6391/6392 + Sentinels 26391-26393, PostgreSQL 5441/5442; data in $BASE)"
}

cmd_down() {
  local keep=0 node pids=() pid entry
  case "${1:-}" in
    "") ;;
    --keep) keep=1 ;;
    *) usage_fail "down: unknown option '$1'" ;;
  esac
  [[ $# -le 1 ]] || usage_fail "down: too many arguments"
  require_root
  lock
  # Sentinels first, so none fails over while the data nodes go down.
  for node in "${SENTINEL_NODES[@]}" "${REDIS_NODES[@]}" pg-replica pg-primary; do node_stop "$node"; done
  # The Erlang VMs take seconds each to stop: in parallel.
  for node in "${RABBIT_NODES[@]}"; do
    rabbit_stop "$node" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || true; done
  for node in "${ALL_NODES[@]}"; do
    pid="$(node_pid "$node")"
    [[ -z "$pid" ]] || fail "$node (pid $pid) is still running"
  done
  if ((keep)); then
    info "down (data kept in $BASE)"
  else
    for entry in "${OWNED[@]}"; do rm -rf "${BASE:?}/$entry"; done
    info "down (data removed)"
  fi
}

cmd_status() {
  PROBLEMS=()
  VERBOSE=1
  if check_all; then
    echo "status: everything up"
  else
    echo "status: NOT ready:"
    printf '  %s\n' "${PROBLEMS[@]}"
    exit 1
  fi
}

cmd_env() {
  cat <<'EOF'
RABBITMQ_HOSTS=127.0.0.1:5701,127.0.0.1:5702,127.0.0.1:5703
REDIS_SENTINELS=127.0.0.1:26391,127.0.0.1:26392,127.0.0.1:26393
REDIS_MASTER_NAME=chatflow
DB_HOST=127.0.0.1
DB_PORT=5441
DB_READ_HOST=127.0.0.1
DB_READ_PORT=5442
EOF
}

cmd_wait() {
  local start
  start="$(now_ms)"
  require_root
  wait_for "the cluster" "$WAIT_SECONDS" check_all
  info "everything up (waited $(seconds_since "$start")s)"
}

node_arg() { # COMMAND [NODE [EXTRA]]: exactly one known node name, or exit 2
  [[ -n "${2:-}" ]] || usage_fail "$1: which node? (one of ${ALL_NODES[*]} redis-master redis-replica)"
  [[ -z "${3:-}" ]] || usage_fail "$1: one node at a time"
  is_node "$2" || [[ "$2" == redis-master || "$2" == redis-replica ]] ||
    usage_fail "$1: unknown node '$2' (one of ${ALL_NODES[*]} redis-master redis-replica)"
}

cmd_kill() {
  local node pid port pids label
  node_arg kill "$@"
  require_root
  lock
  node="$(resolve_node "$1")"
  label="$node"
  [[ "$node" == "$1" ]] || label="$1 = $node"
  pid="$(node_pid "$node")"
  [[ -n "$pid" ]] || fail "kill $label: not running"
  port="$(node_port "$node")"
  [[ "$node" == rabbit* ]] && port="$port (dist $((port + 20000)))"
  mapfile -t pids < <(descendants "$pid")
  kill -9 "$pid" "${pids[@]}" 2>/dev/null || true
  wait_gone "$pid" 10 || fail "kill $label: pid $pid survived kill -9"
  info "killed $label: pid $pid${pids[0]:+ and its ${#pids[@]} child process(es) ${pids[*]}}, port $port"
}

cmd_stop() {
  local node pid
  node_arg stop "$@"
  require_root
  lock
  node="$(resolve_node "$1")"
  pid="$(node_pid "$node")"
  if [[ -z "$pid" ]]; then
    info "$node already stopped"
    return 0
  fi
  node_stop "$node"
  info "stopped $node (pid $pid, port $(node_port "$node"))"
}

cmd_start() {
  local node start
  start="$(now_ms)"
  node_arg start "$@"
  require_root
  require_tools
  lock
  prepare_base
  node="$(resolve_node "$1")"
  node_start "$node"
  if [[ "$node" == rabbit* ]]; then
    rabbit_wait_booted "$node"
    [[ "$node" == rabbit1 ]] || rabbit_join "$node"
  fi
  wait_for "$node" "$WAIT_SECONDS" check_one "$node"
  info "$node ready in $(seconds_since "$start")s"
}

main() {
  [[ "$BASE" =~ ^/[A-Za-z0-9._/-]+$ && "$BASE" != / ]] ||
    usage_fail "CHATFLOW_CLUSTER_DIR must be an absolute path of letters, digits, . _ - / (got '$BASE')"
  BASE="$(realpath -m "$BASE")"
  [[ -d "$PG_BIN" ]] || PG_BIN="$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    -h | --help | help) usage ;;
    up | status | env | wait)
      [[ $# -eq 0 ]] || usage_fail "$cmd takes no arguments (got '$*')"
      "cmd_$cmd"
      ;;
    down) cmd_down "$@" ;;
    kill) cmd_kill "$@" ;;
    stop) cmd_stop "$@" ;;
    start) cmd_start "$@" ;;
    "") usage_fail "which command? (up, down, status, env, kill, start, stop, wait)" ;;
    *) usage_fail "unknown command '$cmd'" ;;
  esac
}

main "$@"
