#!/usr/bin/env bash
# A plain PostgreSQL (no TimescaleDB, like Cloud SQL) for tests and local
# runs: the host's own PostgreSQL packages, a cluster outside the repo, a
# loopback port. The last line of `up` is the connection URL.
#
#   deploy/local/postgres.sh up|down|restart|status|url|psql
#
# Environment (defaults):
#   PG_DATA_DIR /var/lib/apigee-timescale/postgres   data directory
#   PG_PORT     55433
#   PG_DB       apigee
#   PG_PASSWORD apigee-local                          superuser password, local only
#   PG_BIN      the newest /usr/lib/postgresql/*/bin
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CL_NAME=postgres
CL_ROOT=
newest_bin() { printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1; }
CL_BIN=${PG_BIN:-$(newest_bin)}
CL_DATA=${PG_DATA_DIR:-/var/lib/apigee-timescale/postgres}
CL_PORT=${PG_PORT:-55433}
CL_DB=${PG_DB:-apigee}
CL_PASS=${PG_PASSWORD:-apigee-local}
CL_OPTS=""
# shellcheck source=deploy/local/cluster.sh
. "$here/cluster.sh"

case "${1:-}" in
up)
	cl_require_root
	if [ ! -x "$CL_BIN/pg_ctl" ] || ! id postgres >/dev/null 2>&1; then
		cl_die "PostgreSQL server packages are not installed (apt-get install postgresql); or set DATABASE_URL to any PostgreSQL >= 14 instead"
	fi
	cl_initdb
	cl_start
	cl_url
	;;
*) cl_main "$@" ;;
esac
