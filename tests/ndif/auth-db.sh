#!/usr/bin/env bash
# A Postgres holding NDIF's API keys, so that a local NDIF checks keys as the public one does
# (ndif's API turns its auth on when NDIF_POSTGRES_URL is set: no key -> 401, a malformed key
# -> 400, an unknown key -> 403). The schema is the part of ndif's init.sql its auth query reads.
#
#   bash auth-db.sh setup          # asyncpg into the NDIF venv (the API's Postgres driver)
#   bash auth-db.sh start KEY TAG  # a fresh database on 127.0.0.1:$NDIF_PG_PORT (5433) with one
#                                  # key (TAG: its user tag, e.g. trusted, or none); prints its URL
#   bash auth-db.sh stop
set -euo pipefail

W=${NDIF_WORK:-${TMPDIR:-/tmp}/local-ndif}
VENV=${NDIF_VENV:-$W/venv}
PG=$W/pg
PORT=${NDIF_PG_PORT:-5433}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

as_pg() {  # Postgres refuses to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

setup() {
  "$VENV/bin/pip" install -q asyncpg
  [ -n "$BIN" ] || { apt-get update -qq && apt-get install -y -qq postgresql; }
}

start() {
  local key=$1 tag=${2:-none} user=7c9e6679-7425-40de-944b-e07fc1f90ae7
  [ -n "$BIN" ] || { echo "no PostgreSQL server binaries: run '$0 setup'" >&2; exit 1; }
  stop >/dev/null 2>&1 || true
  rm -rf "$PG"; mkdir -p "$PG"
  [ "$(id -u)" = 0 ] && chown postgres "$PG"
  as_pg "$BIN/initdb" -D "$PG/data" -A trust -U ndif > "$PG/initdb.log"
  as_pg "$BIN/pg_ctl" -D "$PG/data" -l "$PG/postgres.log" -w \
      -o "-p $PORT -k $PG -c listen_addresses=127.0.0.1" start > /dev/null
  as_pg "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U ndif -d postgres -q -v ON_ERROR_STOP=1 <<SQL
CREATE TABLE users (user_id uuid PRIMARY KEY, email text);
CREATE TABLE keys (key_id uuid PRIMARY KEY, user_id uuid REFERENCES users);
CREATE TABLE user_tags (user_tag_id serial PRIMARY KEY, name text UNIQUE);
CREATE TABLE key_user_tag_assignments (key_id uuid REFERENCES keys, user_tag_id int REFERENCES user_tags);
INSERT INTO users VALUES ('$user', 'tests@nnct.invalid');
INSERT INTO keys VALUES ('$key', '$user');
SQL
  if [ "$tag" != none ]; then
    as_pg "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U ndif -d postgres -q -v ON_ERROR_STOP=1 \
        -c "INSERT INTO user_tags (name) VALUES ('$tag'); INSERT INTO key_user_tag_assignments SELECT '$key', user_tag_id FROM user_tags WHERE name = '$tag';"
  fi
  echo "postgresql://ndif@127.0.0.1:$PORT/postgres"
}

stop() {
  [ -d "$PG/data" ] && as_pg "$BIN/pg_ctl" -D "$PG/data" -m fast -w stop
}

case "${1:-}" in
  setup) setup ;;
  start) shift; start "$@" ;;
  stop) stop ;;
  *) echo "usage: $0 setup | start KEY [TAG] | stop" >&2; exit 2 ;;
esac
