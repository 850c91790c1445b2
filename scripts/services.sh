#!/usr/bin/env bash
# Makes sure the local RabbitMQ and Redis the tests and the demo use are running, starting
# whichever is absent. Safe to run when both are up.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name port seconds
  for _ in $(seq 1 "$3"); do
    if port_open "$2"; then return 0; fi
    sleep 1
  done
  echo "services: $1 did not come up on 127.0.0.1:$2 within $3 s" >&2
  return 1
}

if ! port_open 6379; then
  if ! command -v redis-server >/dev/null; then
    echo "services: Redis is absent and redis-server is not installed (apt-get install redis-server, or docker compose -f deploy/compose.yaml up -d redis)" >&2
    exit 1
  fi
  echo "services: starting Redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_for Redis 6379 30
fi

if ! port_open 5672; then
  if ! command -v rabbitmq-server >/dev/null; then
    echo "services: RabbitMQ is absent and rabbitmq-server is not installed (apt-get install rabbitmq-server, or docker compose -f deploy/compose.yaml up -d rabbitmq)" >&2
    exit 1
  fi
  echo "services: starting RabbitMQ on 127.0.0.1:5672"
  rabbitmq-server -detached
  wait_for RabbitMQ 5672 90
fi
echo "services: RabbitMQ 127.0.0.1:5672 and Redis 127.0.0.1:6379 are up"
