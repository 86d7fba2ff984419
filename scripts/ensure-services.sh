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
