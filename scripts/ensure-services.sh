#!/usr/bin/env bash
# Start the servers the test suite talks to, if they are not running yet. Idempotent.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }

if command -v pg_isready >/dev/null 2>&1 && ! pg_up; then
  echo "ensure-services: starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  pg_up || echo "ensure-services: PostgreSQL did not come up (PostgreSQL tests will skip, or fail under CI=true)" >&2
fi

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }

if command -v redis-server >/dev/null 2>&1 && ! redis_up; then
  echo "ensure-services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 1 30); do redis_up && break; sleep 1; done
  redis_up || echo "ensure-services: Redis did not come up (Redis tests will skip, or fail under CI=true)" >&2
fi

# The dashboard's browser tests drive Debian's Chromium through its ChromeDriver (nothing is
# downloaded by the tests themselves).
if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
  echo "ensure-services: installing chromium and chromium-driver"
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
      || echo "ensure-services: chromium did not install (browser tests will skip, or fail under CI=true)" >&2
  fi
fi
