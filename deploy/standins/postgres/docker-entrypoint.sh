#!/bin/bash
# The STAND-IN postgres image's entrypoint (smoke runs only). It keeps the official image's
# documented contract (https://hub.docker.com/_/postgres, "Environment Variables" and PGDATA) for
# what compose.yaml uses:
#   POSTGRES_PASSWORD          required (unless POSTGRES_HOST_AUTH_METHOD=trust): the superuser's
#   POSTGRES_USER              the superuser made by initdb; default postgres
#   POSTGRES_DB                the database created on first start; default POSTGRES_USER
#   POSTGRES_INITDB_ARGS       extra initdb arguments
#   POSTGRES_HOST_AUTH_METHOD  the pg_hba.conf method of `host all all all`; default scram-sha-256
#   PGDATA                     the cluster's directory; default /var/lib/postgresql/data
# The cluster is made once, when PGDATA holds none (an existing one is started as it is), and the
# server runs as the postgres user (started as root, this script takes PGDATA's ownership and
# drops to it), listening on 0.0.0.0:5432. Connections from inside the container (socket,
# loopback) are trusted, as initdb and the official image leave them.
# Not kept: the *_FILE variants, /docker-entrypoint-initdb.d, POSTGRES_INITDB_WALDIR.
set -Eeuo pipefail

# `docker run IMAGE -c some=setting`: options go to postgres, as in the official image.
if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi
if [ "$1" != 'postgres' ]; then
    exec "$@"
fi

export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
POSTGRES_HOST_AUTH_METHOD="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        echo "error: database is uninitialized and POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    echo "initdb: a new cluster in $PGDATA for user $POSTGRES_USER"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of arguments
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
        --encoding=UTF8 --locale=C.UTF-8 ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA"
    printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
    # A server on the socket only while the database is made: nothing outside sees it ready.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
            --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "initdb: done; starting the server"
else
    echo "PostgreSQL cluster in $PGDATA already initialized: skipping initdb"
fi

exec "$@"
