#!/usr/bin/env bash
# Start a local redis-server on 127.0.0.1:6379 when none answers (tests of the Redis path use a real one).
set -u
if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then exit 0; fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server missing: installing it (Debian)"; apt-get install -y -q redis-server >/dev/null || exit 1
fi
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
  --dir /tmp --logfile /tmp/unisr-redis.log
for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && exit 0; sleep 0.1; done
echo "redis-server did not answer on 127.0.0.1:6379" >&2; exit 1
