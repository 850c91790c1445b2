#!/usr/bin/env bash
# Brings up the local services the demo and the tests use, from nothing on a fresh Debian or
# Ubuntu machine: RabbitMQ (127.0.0.1:5672, guest/guest), Redis (127.0.0.1:6379) and PostgreSQL
# (127.0.0.1:5432, user postgres without a password, database test). For each one that does not
# answer, it
#   1. installs it with apt-get when it is absent and we may (root, or sudo without a password),
#      else says exactly what to run and stops;
#   2. starts it: the system's service (`service NAME start`) for the standard instance when we
#      may, else an instance of our own (below);
#   3. waits until it answers its own protocol (AMQP, PING, a query on database test).
# Safe to run again: what answers is left alone.
#
#   scripts/services.sh            # = up
#   scripts/services.sh up|down|status
#
# Parameters (environment):
#   RABBITMQ_PORT, REDIS_PORT, POSTGRES_PORT   the ports (default 5672, 6379, 5432)
#   SERVICES                                   which ones (default "rabbitmq redis postgres")
#   SERVICES_DIR   where instances of our own keep their data, logs and pid files, one
#                  directory each. When set, every instance is our own (never the system's
#                  service): tests use it to start private instances on other ports, next to
#                  the shared ones, and `down` stops them. Default for the standard instances
#                  when the system's service cannot be used:
#                  ${XDG_STATE_HOME:-~/.local/state}/outlook-sync/services
# `down` stops only instances of our own (those with a pid file under SERVICES_DIR).
set -euo pipefail

action="${1:-up}"
RABBITMQ_PORT="${RABBITMQ_PORT:-5672}"
REDIS_PORT="${REDIS_PORT:-6379}"
POSTGRES_PORT="${POSTGRES_PORT:-5432}"
SERVICES="${SERVICES:-rabbitmq redis postgres}"
private=false
if [ -n "${SERVICES_DIR:-}" ]; then private=true; fi
SERVICES_DIR="${SERVICES_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/outlook-sync/services}"

say() { echo "services: $*"; }
fail() { echo "services: $*" >&2; exit 1; }

# ---- who may do what -------------------------------------------------------------------------

as_root() { # command...: run as root if we are or may be, else return 1
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1
  fi
}
may_be_root() { [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }; }

# ---- does it answer? ------------------------------------------------------------------------

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

answers_rabbitmq() { # port: the broker answers an AMQP 0-9-1 header with connection.start
  local port="$1" frame
  port_open "$port" || return 1
  frame="$(timeout 5 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
    printf "AMQP\x00\x00\x09\x01" >&3
    head -c 1 <&3 | od -An -tx1' "$port" 2>/dev/null)" || return 1
  [ "$(echo "$frame" | tr -d ' ')" = 01 ]
}

answers_redis() { # port
  [ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]
}

answers_postgres() { # port: user postgres, no password, database test
  timeout 10 psql -w -X -q -h 127.0.0.1 -p "$1" -U postgres -d test -c 'select 1' >/dev/null 2>&1
}

answers() { "answers_$1" "$(port_of "$1")"; }

port_of() {
  case "$1" in
    rabbitmq) echo "$RABBITMQ_PORT" ;;
    redis) echo "$REDIS_PORT" ;;
    postgres) echo "$POSTGRES_PORT" ;;
    *) fail "unknown service $1 (SERVICES takes rabbitmq, redis, postgres)" ;;
  esac
}

wait_until_answers() { # name seconds [pid of the process that must stay alive meanwhile]
  local name="$1" deadline=$((SECONDS + $2)) pid="${3:-}"
  while [ "$SECONDS" -lt "$deadline" ]; do
    if answers "$name"; then return 0; fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    sleep 1
  done
  return 1
}

# ---- installed? -----------------------------------------------------------------------------

postgres_bin() { # the directory of initdb/pg_ctl: Debian keeps them out of PATH
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  command -v pg_ctl >/dev/null && { dirname "$(command -v pg_ctl)"; return 0; }
  return 1
}

rabbitmq_bin() {
  if [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then echo /usr/lib/rabbitmq/bin
  elif command -v rabbitmq-server >/dev/null; then dirname "$(command -v rabbitmq-server)"
  else return 1
  fi
}

installed() {
  case "$1" in
    rabbitmq) rabbitmq_bin >/dev/null ;;
    redis) command -v redis-server >/dev/null && command -v redis-cli >/dev/null ;;
    postgres) postgres_bin >/dev/null && command -v psql >/dev/null ;;
  esac
}

package_of() {
  case "$1" in
    rabbitmq) echo rabbitmq-server ;;
    redis) echo redis-server ;;
    postgres) echo postgresql ;;
  esac
}

install_missing() { # names...
  local pkgs=() name
  for name in "$@"; do pkgs+=("$(package_of "$name")"); done
  if ! command -v apt-get >/dev/null; then
    fail "${pkgs[*]} not installed, and this is not a Debian or Ubuntu machine: install RabbitMQ, Redis and PostgreSQL with your package manager (or: docker compose -f deploy/compose.yaml up -d rabbitmq redis), then run scripts/services.sh again"
  fi
  if ! may_be_root; then
    fail "not installed: ${pkgs[*]}. Install with:
    sudo apt-get update && sudo apt-get install -y ${pkgs[*]}
then run scripts/services.sh again."
  fi
  say "installing ${pkgs[*]} with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1 || {
    as_root apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null
  } || fail "apt-get install ${pkgs[*]} failed (run it yourself to see why)"
}

# ---- instances of our own: port and data directory as parameters ----------------------------

start_own_redis() { # port dir
  local port="$1" dir="$2"
  mkdir -p "$dir"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$dir" \
    --save "" --appendonly no --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
}

start_own_rabbitmq() { # port dir: its own node name, configuration, plugins and data
  local port="$1" dir="$2" bin
  bin="$(rabbitmq_bin)"
  mkdir -p "$dir/mnesia" "$dir/log"
  printf 'listeners.tcp.default = 127.0.0.1:%s\n' "$port" > "$dir/rabbitmq.conf"
  echo '[].' > "$dir/enabled_plugins"
  : > "$dir/rabbitmq-env.conf"
  # The distribution port must not collide with another node's: derived from the AMQP port.
  (
    export RABBITMQ_NODENAME="outlook-sync-$port@localhost" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$port" \
      RABBITMQ_DIST_PORT="$(((port + 20000) % 45000 + 20000))" \
      RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
      RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log"
    setsid "$bin/rabbitmq-server" >"$dir/log/startup.log" 2>&1 </dev/null &
    echo $! >"$dir/launcher.pid"
  )
}

start_own_postgres() { # port dir: a cluster of our own, trusting local connections
  local port="$1" dir="$2" bin run=()
  bin="$(postgres_bin)"
  mkdir -p "$dir"
  # PostgreSQL refuses to run as root: as root, the cluster belongs to the postgres user.
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || fail "PostgreSQL must not run as root and there is no postgres user"
    chown postgres: "$dir"
    run=(runuser -u postgres --)
    # SERVICES_DIR is ours: let the postgres user pass through it to its own directory.
    chmod o+x "$SERVICES_DIR"
    "${run[@]}" test -w "$dir" \
      || fail "PostgreSQL runs as user postgres, which cannot reach $dir (a directory above it is closed to other users): choose a SERVICES_DIR it can reach, e.g. under /tmp or /var/tmp"
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    "${run[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
      || fail "initdb failed: see $dir/initdb.log"
  fi
  "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $dir" start >/dev/null \
    || fail "PostgreSQL did not start on 127.0.0.1:$port: see $dir/postgres.log"
  psql -w -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
    "select 1 from pg_database where datname = 'test'" | grep -q 1 \
    || psql -w -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'create database test' >/dev/null
}

stop_own() { # name dir port
  local name="$1" dir="$2" port="$3" pid mark
  case "$name" in
    redis) pid="$(cat "$dir/redis.pid" 2>/dev/null)" mark="127.0.0.1:$port" || return 0 ;;
    # The launcher script stops its node on SIGTERM; its environment names our directory.
    rabbitmq) pid="$(cat "$dir/launcher.pid" 2>/dev/null)" mark="$dir" || return 0 ;;
    postgres)
      [ -f "$dir/data/postmaster.pid" ] || return 0
      local run=()
      [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
      "${run[@]}" "$(postgres_bin)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
      say "stopped PostgreSQL ($dir)"
      return 0
      ;;
  esac
  # Only our own process: a stale pid file may name another process by now.
  if ! cat "/proc/$pid/cmdline" "/proc/$pid/environ" 2>/dev/null | tr '\0' '\n' | grep -qF -- "$mark"; then
    rm -f "$dir/redis.pid" "$dir/launcher.pid"
    return 0
  fi
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    for _ in $(seq 1 30); do port_open "$port" || break; sleep 1; done
    say "stopped $name ($dir)"
  fi
  rm -f "$dir/redis.pid" "$dir/launcher.pid"
}

# ---- the system's own service -----------------------------------------------------------------

system_service() { # name: the system's service name for the standard instance, if it has one
  local svc
  case "$1" in
    rabbitmq) svc=rabbitmq-server ;;
    redis) svc=redis-server ;;
    postgres) svc=postgresql ;;
  esac
  if [ -e "/etc/init.d/$svc" ] || [ -e "/lib/systemd/system/$svc.service" ] || [ -e "/usr/lib/systemd/system/$svc.service" ]; then
    echo "$svc"
  else
    return 1
  fi
}

standard_port() {
  case "$1" in
    rabbitmq) [ "$RABBITMQ_PORT" = 5672 ] ;;
    redis) [ "$REDIS_PORT" = 6379 ] ;;
    postgres) [ "$POSTGRES_PORT" = 5432 ] ;;
  esac
}

# The system's PostgreSQL answers but refuses user postgres over TCP without a password, or has
# no database test (Debian's defaults): trust user postgres from this machine, create test.
prepare_system_postgres() {
  if ! may_be_root; then
    fail "PostgreSQL runs on 127.0.0.1:$POSTGRES_PORT but user postgres cannot use database test without a password. Run:
    sudo -u postgres psql -p $POSTGRES_PORT -c 'create database test'
    sudo -u postgres psql -p $POSTGRES_PORT -tAc 'show hba_file'   # add, first: host all postgres 127.0.0.1/32 trust
    sudo -u postgres psql -p $POSTGRES_PORT -c 'select pg_reload_conf()'"
  fi
  local q=(as_root runuser -u postgres -- psql -w -X -q -p "$POSTGRES_PORT" -d postgres)
  "${q[@]}" -tAc "select 1 from pg_database where datname = 'test'" | grep -q 1 \
    || "${q[@]}" -c 'create database test' >/dev/null
  local hba
  hba="$("${q[@]}" -tAc 'show hba_file')"
  if ! as_root grep -q '^host all postgres 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    "${q[@]}" -c 'select pg_reload_conf()' >/dev/null
    say "PostgreSQL: user postgres may now connect from this machine without a password (first lines of $hba), for the tests"
  fi
}

# ---- up / down / status ----------------------------------------------------------------------

label() {
  case "$1" in
    rabbitmq) echo "RabbitMQ 127.0.0.1:$RABBITMQ_PORT" ;;
    redis) echo "Redis 127.0.0.1:$REDIS_PORT" ;;
    postgres) echo "PostgreSQL 127.0.0.1:$POSTGRES_PORT" ;;
  esac
}

start() { # name
  local name="$1" svc port dir
  port="$(port_of "$name")"
  dir="$SERVICES_DIR/$name-$port"
  if ! $private && standard_port "$name" && svc="$(system_service "$name")" && may_be_root; then
    say "starting $(label "$name") (service $svc start)"
    as_root service "$svc" start >/dev/null 2>&1 || true
    # Debian's PostgreSQL answers, but not yet as the tests connect.
    if [ "$name" = postgres ] && timeout 60 bash -c "until pg_isready -q -h 127.0.0.1 -p $port; do sleep 1; done"; then
      answers postgres || prepare_system_postgres
    fi
    if wait_until_answers "$name" 60; then return 0; fi
    say "service $svc did not bring up $(label "$name"); starting an instance of our own in $dir"
  else
    say "starting $(label "$name"), data in $dir"
  fi
  "start_own_$name" "$port" "$dir"
}

up() {
  local name missing=()
  for name in $SERVICES; do
    answers "$name" && continue
    installed "$name" || missing+=("$name")
  done
  if [ "${#missing[@]}" -gt 0 ]; then install_missing "${missing[@]}"; fi
  local started=()
  for name in $SERVICES; do
    if answers "$name"; then continue; fi
    start "$name"
    started+=("$name")
  done
  for name in "${started[@]}"; do
    local dir launcher=""
    dir="$SERVICES_DIR/$name-$(port_of "$name")"
    [ "$name" = rabbitmq ] && launcher="$(cat "$dir/launcher.pid" 2>/dev/null || true)"
    # RabbitMQ takes the longest (tens of seconds on a busy machine).
    if ! wait_until_answers "$name" 120 "$launcher"; then
      [ -f "$dir/log/startup.log" ] && tail -n 3 "$dir/log/startup.log" >&2
      fail "$(label "$name") did not come up (is the port taken by something else?); its logs: $dir (or the system's service logs)"
    fi
  done
  local up=()
  for name in $SERVICES; do up+=("$(label "$name")"); done
  say "up: $(IFS=,; echo "${up[*]}" | sed 's/,/, /g')"
}

down() {
  local name
  for name in $SERVICES; do
    stop_own "$name" "$SERVICES_DIR/$name-$(port_of "$name")" "$(port_of "$name")"
  done
}

status() {
  local name rc=0
  for name in $SERVICES; do
    if answers "$name"; then say "$(label "$name"): answers"; else say "$(label "$name"): does not answer"; rc=1; fi
  done
  return $rc
}

case "$action" in
  up | down | status) "$action" ;;
  *) fail "usage: scripts/services.sh [up|down|status]" ;;
esac
