#!/usr/bin/env bash
# Start a local PostgreSQL for the distributed-tuning test (Optuna RDB storage), idempotently.
#
#   url=$(bash scripts/start_postgres.sh)      # prints the SQLAlchemy URL on stdout, logs on stderr
#   export RAKUTEN_TEST_PG_URL="$url"
#
# Installs Debian's `postgresql` package when no server is installed (needs root or passwordless
# sudo, and apt), creates the cluster if there is none, starts it, and creates a login role and a
# database it owns (password auth over TCP on 127.0.0.1 only: Debian's default listen_addresses is
# localhost). Safe to rerun: every step checks first. Exits non-zero, with one line on stderr, when
# PostgreSQL cannot be had; callers (.ci/run) then leave the PostgreSQL test to skip.
#
# Settings (environment): PG_USER, PG_PASSWORD, PG_DB (default rakuten/rakuten/rakuten).
set -euo pipefail

PG_USER=${PG_USER:-rakuten}
PG_PASSWORD=${PG_PASSWORD:-rakuten}
PG_DB=${PG_DB:-rakuten}
CLUSTER=main

log() { echo "start_postgres: $*" >&2; }
die() { echo "start_postgres: error: $*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  die "needs root (or passwordless sudo) to install and start PostgreSQL"
fi
as_postgres() {  # run a command as the postgres OS user (peer auth on the Unix socket)
  if command -v runuser >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "${SUDO[@]}" -u postgres "$@"
  fi
}
server_version() {  # newest installed server major version, or nothing
  ls /usr/lib/postgresql 2>/dev/null | while read -r v; do
    [ -x "/usr/lib/postgresql/$v/bin/postgres" ] && echo "$v"
  done | sort -n | tail -1
}

# 1. the server package
VER=$(server_version)
if [ -z "$VER" ] || ! command -v pg_ctlcluster >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is unavailable"
  log "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq >&2 || die "apt-get update failed"
  "${SUDO[@]}" apt-get install -y -qq postgresql >&2 || die "apt-get install postgresql failed"
  VER=$(server_version)
  [ -n "$VER" ] || die "postgresql installed but no server binary found under /usr/lib/postgresql"
fi

# 2. the cluster (the package creates one, unless its post-install was told not to)
if ! pg_lsclusters -h 2>/dev/null | awk -v v="$VER" -v c="$CLUSTER" '$1 == v && $2 == c {found=1} END {exit !found}'; then
  log "creating cluster $VER/$CLUSTER"
  "${SUDO[@]}" pg_createcluster "$VER" "$CLUSTER" >&2 || die "pg_createcluster $VER $CLUSTER failed"
fi
PORT=$(pg_lsclusters -h | awk -v v="$VER" -v c="$CLUSTER" '$1 == v && $2 == c {print $3}')

# 3. running (the socket directory lives on a tmpfs that a fresh boot empties)
"${SUDO[@]}" install -d -o postgres -g postgres -m 2775 /var/run/postgresql
if ! pg_lsclusters -h | awk -v v="$VER" -v c="$CLUSTER" '$1 == v && $2 == c && $4 ~ /online/ {found=1} END {exit !found}'; then
  log "starting cluster $VER/$CLUSTER on port $PORT"
  "${SUDO[@]}" pg_ctlcluster "$VER" "$CLUSTER" start >&2 || die "pg_ctlcluster $VER $CLUSTER start failed"
fi
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 1
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || die "server not accepting connections on 127.0.0.1:$PORT after 30 s"

# 4. role and database (the password is (re)set each time, so a changed PG_PASSWORD takes effect)
psql_admin() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" "$@"; }
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != "1" ]; then
  log "creating role $PG_USER"
  psql_admin -c "CREATE ROLE \"$PG_USER\" LOGIN PASSWORD '$PG_PASSWORD'" >&2
else
  psql_admin -c "ALTER ROLE \"$PG_USER\" LOGIN PASSWORD '$PG_PASSWORD'" >&2
fi
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != "1" ]; then
  log "creating database $PG_DB"
  psql_admin -c "CREATE DATABASE \"$PG_DB\" OWNER \"$PG_USER\"" >&2
fi

# 5. the URL really works: password auth over TCP
PGPASSWORD="$PG_PASSWORD" psql -X -q -h 127.0.0.1 -p "$PORT" -U "$PG_USER" -d "$PG_DB" -tAc "SELECT 1" >/dev/null \
  || die "cannot log in as $PG_USER to $PG_DB on 127.0.0.1:$PORT with the password"
log "PostgreSQL $VER ready on 127.0.0.1:$PORT (database $PG_DB, role $PG_USER)"
echo "postgresql+psycopg2://$PG_USER:$PG_PASSWORD@127.0.0.1:$PORT/$PG_DB"
