#!/usr/bin/env bash
# Installs what the project's local commands need on a Debian machine, so
# that `make test`, `make demo` and .ci/run work on a fresh machine that has
# only Go. The one place that knows the project's system packages.
#
#   deploy/local/setup.sh test|demo|bench
#
# As root, missing packages are installed with apt-get. Otherwise, or off
# Debian, one line says what to install, or which variable points the
# command at servers the user already has, and the script exits 1.
#
# A purpose needs no local database server when its URL variables are set:
#   test   TEST_TIMESCALEDB_URL and TEST_POSTGRES_URL (reliability still
#          needs the local TimescaleDB root: it restarts its own cluster)
#   demo   DATABASE_URL
#   bench  BENCH_DATABASE_URL, and TEST_POSTGRES_URL for bench-rollup's runs
#          on plain PostgreSQL
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

purpose=${1:-}
have() { command -v "$1" >/dev/null 2>&1; }
pg_server() { compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null && id postgres >/dev/null 2>&1; }

need=()      # Debian packages to install
hint=()      # what a user without root can set instead
timescaledb() { have debootstrap || need+=(debootstrap); }
postgres() {
	pg_server || need+=(postgresql)
	have psql || need+=(postgresql-client)
}

case "$purpose" in
test)
	# As root, the reliability suite runs a private TimescaleDB cluster in
	# the root, so debootstrap is needed even when TEST_TIMESCALEDB_URL is set.
	if [ -z "${TEST_TIMESCALEDB_URL:-}" ]; then
		timescaledb
		hint+=(TEST_TIMESCALEDB_URL)
	elif [ "$(id -u)" -eq 0 ]; then
		timescaledb
	fi
	[ -n "${TEST_POSTGRES_URL:-}" ] || { postgres; hint+=(TEST_POSTGRES_URL); }
	# deploy/ tests: shellcheck lints every script, zip/unzip build and read
	# the Apigee bundle, node runs the bundle's JavaScript step.
	for tool in shellcheck zip unzip; do have "$tool" || need+=("$tool"); done
	have node || need+=(nodejs)
	# npm installs apigeelint, Apigee's linter for the shared flows (below).
	have npm || need+=(npm)
	;;
demo)
	[ -n "${DATABASE_URL:-}" ] || { timescaledb; hint+=(DATABASE_URL); }
	;;
bench)
	[ -n "${BENCH_DATABASE_URL:-}" ] || { timescaledb; hint+=(BENCH_DATABASE_URL); }
	[ -n "${TEST_POSTGRES_URL:-}" ] || { postgres; hint+=(TEST_POSTGRES_URL); }
	;;
*)
	echo "usage: $0 test|demo|bench" >&2
	exit 2
	;;
esac

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ] || ! have apt-get; then
		msg="setup: missing ${need[*]}: install them (as root on Debian: apt-get install ${need[*]})"
		[ ${#hint[@]} -gt 0 ] && msg+=", or set ${hint[*]} to servers you already have"
		echo "$msg" >&2
		exit 1
	fi
	echo "setup: installing ${need[*]}" >&2
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# apigeelint, pinned, from the npm registry, into a folder outside the
# repository (never committed): root's in /var/lib, a user's in their cache
# (where deploy/apigee/apigeelint_test.go looks, beside $APIGEELINT).
if [ "$purpose" = test ]; then
	apigeelint_version=2.85.1
	if [ "$(id -u)" -eq 0 ]; then
		prefix=/var/lib/apigee-timescale/apigeelint
	else
		prefix=${XDG_CACHE_HOME:-$HOME/.cache}/apigee-timescale/apigeelint
	fi
	if [ "$("$prefix/node_modules/.bin/apigeelint" --version 2>/dev/null)" != "$apigeelint_version" ]; then
		echo "setup: installing apigeelint $apigeelint_version into $prefix" >&2
		mkdir -p "$prefix"
		npm install --prefix "$prefix" --no-audit --no-fund --silent "apigeelint@$apigeelint_version" >/dev/null
	fi
fi
