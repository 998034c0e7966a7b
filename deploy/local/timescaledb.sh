#!/usr/bin/env bash
# A real TimescaleDB for tests and local runs, with no Docker: Debian trixie's
# postgresql-17 + postgresql-17-timescaledb in a debootstrap root, started with
# chroot on a loopback port. The last line of `up` is the connection URL.
#
#   deploy/local/timescaledb.sh up|down|restart|status|url|psql
#
# Environment (defaults):
#   TSDB_ROOT   /var/lib/apigee-timescale/trixie   debootstrap root, outside the repo
#   TSDB_PORT   55432
#   TSDB_DATA   /var/lib/apigee/data                 data directory inside the root
#               (a second cluster needs its own TSDB_DATA and TSDB_PORT)
#   TSDB_DB     apigee
#   TSDB_PASSWORD apigee-local                     superuser password, local only
#   TSDB_MIRROR the Debian mirror of this machine's own apt sources
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CL_NAME=timescaledb
CL_ROOT=${TSDB_ROOT:-/var/lib/apigee-timescale/trixie}
CL_BIN=/usr/lib/postgresql/17/bin
CL_DATA=${TSDB_DATA:-/var/lib/apigee/data}
CL_PORT=${TSDB_PORT:-55432}
CL_DB=${TSDB_DB:-apigee}
CL_PASS=${TSDB_PASSWORD:-apigee-local}
CL_OPTS="-c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off"
# shellcheck source=deploy/local/cluster.sh
. "$here/cluster.sh"

# mirror prints the first Debian archive URI of this machine's apt sources,
# so that no host name lives in the repository.
mirror() {
	if [ -n "${TSDB_MIRROR:-}" ]; then echo "$TSDB_MIRROR"; return; fi
	local uri
	uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
	[ -n "$uri" ] || uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
	[ -n "$uri" ] || cl_die "no Debian mirror found in /etc/apt/sources*; set TSDB_MIRROR"
	echo "$uri"
}

provision() {
	cl_require_root
	command -v debootstrap >/dev/null 2>&1 ||
		cl_die "debootstrap is not installed (apt-get install debootstrap); or set DATABASE_URL to any TimescaleDB >= 2.13 or PostgreSQL >= 14 instead"
	if [ -f "$CL_ROOT/.apigee-ready" ]; then
		return 0
	fi
	local m
	m=$(mirror)
	echo "timescaledb: building trixie root in $CL_ROOT (about a minute)" >&2
	rm -rf "$CL_ROOT"
	mkdir -p "$(dirname "$CL_ROOT")"
	local keyring=()
	[ -f /usr/share/keyrings/debian-archive-trixie-stable.gpg ] &&
		keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
	debootstrap --variant=minbase "${keyring[@]}" \
		--include=postgresql-17,postgresql-17-timescaledb trixie "$CL_ROOT" "$m" >"$CL_ROOT.debootstrap.log" 2>&1 ||
		{ tail -n 20 "$CL_ROOT.debootstrap.log" >&2; cl_die "debootstrap failed (log: $CL_ROOT.debootstrap.log)"; }
	# The package's own cluster is not used; ours lives in $CL_DATA.
	touch "$CL_ROOT/.apigee-ready"
}

case "${1:-}" in
up)
	provision
	cl_initdb
	cl_start
	cl_sql "$CL_DB" "CREATE EXTENSION IF NOT EXISTS timescaledb" >/dev/null ||
		cl_die "CREATE EXTENSION timescaledb failed (see ${CL_ROOT}${CL_DATA}/server.log)"
	cl_url
	;;
*) cl_main "$@" ;;
esac
