#!/usr/bin/env bash
# Creates ChatFlow's database role and database if absent, applies
# schema.sql (upgrading an existing database in place: new indexes replace
# old ones, and the rollups are filled from the messages already stored),
# and creates the partitions of today and the next 7 days.
# Idempotent: a second run changes nothing.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: DB_USER=chatflow_user DB_PASSWORD=... database/setup_database.sh

Environment:
  DB_USER       role that owns the database and that consumers connect as (required)
  DB_PASSWORD   that role's password (set on creation and on every run; empty:
                no password, for trust-authenticated local setups)
  DB_HOST       default 127.0.0.1        DB_PORT   default 5432
  DB_NAME       default chatflow
  ADMIN_USER    a superuser to create the role and database (default postgres;
                ADMIN_PASSWORD via PGPASSWORD if needed)
  PARTITION_DAYS  days of partitions to create from today (default 8)
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

: "${DB_USER:?DB_USER is required (see --help)}"
DB_PASSWORD="${DB_PASSWORD:-}"
DB_HOST="${DB_HOST:-127.0.0.1}"
DB_PORT="${DB_PORT:-5432}"
DB_NAME="${DB_NAME:-chatflow}"
ADMIN_USER="${ADMIN_USER:-postgres}"
PARTITION_DAYS="${PARTITION_DAYS:-8}"
here="$(cd "$(dirname "$0")" && pwd)"

for name in DB_USER DB_NAME; do
  if [[ ! "${!name}" =~ ^[A-Za-z_][A-Za-z0-9_]{0,62}$ ]]; then
    echo "setup_database.sh: $name must be a plain identifier (letters, digits, _), got '${!name}'" >&2
    exit 2
  fi
done
[[ "$PARTITION_DAYS" =~ ^[0-9]+$ ]] || { echo "setup_database.sh: PARTITION_DAYS must be a number" >&2; exit 2; }

admin() { psql -X -q -v ON_ERROR_STOP=1 -h "$DB_HOST" -p "$DB_PORT" -U "$ADMIN_USER" "$@"; }

# The role: created if absent; its password set from the environment (psql
# variables keep it out of the command line and the server log).
admin -d postgres -v role="$DB_USER" -v password="$DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'role', :'password')
WHERE :'password' <> '' \gexec
SQL

# The database, owned by the role.
admin -d postgres -v db="$DB_NAME" -v role="$DB_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL

# Schema and partitions, as the owner so it owns every table.
PGOPTIONS="-c client_min_messages=warning" PGPASSWORD="$DB_PASSWORD" psql -X -q -v ON_ERROR_STOP=1 -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" -d "$DB_NAME" \
  -f "$here/schema.sql" \
  -c "SELECT chatflow_backfill_rollups()" \
  -c "SELECT chatflow_ensure_partitions((now() AT TIME ZONE 'UTC')::date, $PARTITION_DAYS)" >/dev/null
echo "setup_database.sh: $DB_NAME on $DB_HOST:$DB_PORT ready (owner $DB_USER, partitions for $PARTITION_DAYS days)"
