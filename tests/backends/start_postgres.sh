#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on loopback and prints the base URL the
# tests use (`postgres://user[:password]@127.0.0.1:5432`). Uses $KASTELL_TEST_POSTGRES
# when set; else the local server (trust auth on our machines); else installs
# Debian's postgresql, starts it and gives the postgres user a password.
set -euo pipefail

if [[ -n "${KASTELL_TEST_POSTGRES:-}" ]]; then
    echo "$KASTELL_TEST_POSTGRES"
    exit 0
fi

url="postgres://postgres@127.0.0.1:5432"
can_connect() { psql "$1/postgres" -tAc 'SELECT 1' >/dev/null 2>&1; }

if command -v psql >/dev/null && can_connect "$url"; then
    echo "$url"
    exit 0
fi

echo "start_postgres: no PostgreSQL answers on 127.0.0.1:5432; installing/starting one" >&2
if ! command -v pg_ctlcluster >/dev/null || [[ -z "$(ls /etc/postgresql 2>/dev/null)" ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql postgresql-contrib libpq-dev >&2
fi
version="$(ls /etc/postgresql | sort -V | tail -n1)"
pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
for _ in $(seq 1 50); do
    pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && break
    sleep 0.2
done
if can_connect "$url"; then
    echo "$url"
    exit 0
fi
# A fresh Debian cluster wants passwords on TCP: give postgres one for the tests.
su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'kastell-test'\"" >&2
url="postgres://postgres:kastell-test@127.0.0.1:5432"
can_connect "$url" || { echo "start_postgres: cannot connect to $url" >&2; exit 1; }
echo "$url"
