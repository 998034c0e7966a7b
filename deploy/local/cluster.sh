# shellcheck shell=bash
# Shared by timescaledb.sh and postgres.sh: one PostgreSQL cluster on a
# loopback port, managed by pg_ctl, optionally inside a chroot. Callers set:
#   CL_NAME    label used in messages
#   CL_BIN     directory of pg_ctl/initdb (as seen from inside CL_ROOT)
#   CL_ROOT    chroot directory, or empty to run on the host
#   CL_DATA    data directory (as seen from inside CL_ROOT)
#   CL_PORT    TCP port on 127.0.0.1
#   CL_DB      database to create
#   CL_PASS    password of the postgres superuser (local development only)
#   CL_OPTS    extra server options (-c name=value ...)
set -euo pipefail

cl_die() { echo "$CL_NAME: $*" >&2; exit 1; }

cl_require_root() {
	if [ "$(id -u)" -ne 0 ]; then
		cl_die "must run as root to manage a local server; or set DATABASE_URL to any TimescaleDB >= 2.13 or PostgreSQL >= 14 instead"
	fi
}

# cl_as_postgres CMD: runs CMD as the postgres user, inside the chroot if any.
cl_as_postgres() {
	if [ -n "$CL_ROOT" ]; then
		chroot "$CL_ROOT" /usr/sbin/runuser -u postgres -- sh -c "$1"
	else
		runuser -u postgres -- sh -c "$1"
	fi
}

cl_url() {
	echo "postgres://postgres:${CL_PASS}@127.0.0.1:${CL_PORT}/${CL_DB}?sslmode=disable"
}

cl_running() {
	cl_as_postgres "$CL_BIN/pg_ctl -D '$CL_DATA' status" >/dev/null 2>&1
}

# cl_chown PATH...: chown to postgres as the chroot (if any) knows that user;
# its uid need not match the host's.
cl_chown() {
	if [ -n "$CL_ROOT" ]; then
		local p args=()
		for p in "$@"; do args+=("${p#"$CL_ROOT"}"); done
		chroot "$CL_ROOT" chown -R postgres:postgres "${args[@]}"
	else
		chown -R postgres:postgres "$@"
	fi
}

cl_initdb() {
	local host_data="${CL_ROOT}${CL_DATA}"
	if [ -f "$host_data/PG_VERSION" ]; then
		return 0
	fi
	echo "$CL_NAME: initialising cluster in $host_data" >&2
	mkdir -p "$host_data"
	local pwfile="${CL_ROOT}/tmp/.apigee-pw.$$"
	umask 077
	printf '%s\n' "$CL_PASS" >"$pwfile"
	cl_chown "$host_data" "$pwfile"
	chmod 700 "$host_data"
	cl_as_postgres "$CL_BIN/initdb -D '$CL_DATA' -U postgres --auth-local=trust --auth-host=scram-sha-256 --pwfile=/tmp/.apigee-pw.$$ -E UTF8 --locale=C.UTF-8" >"${CL_ROOT}/tmp/initdb.log" 2>&1 ||
		{ cat "${CL_ROOT}/tmp/initdb.log" >&2; cl_die "initdb failed"; }
	rm -f "$pwfile"
	# Loopback only: the server is for tests and local development.
	cat >"$host_data/pg_hba.conf" <<HBA
local all all trust
host  all all 127.0.0.1/32 scram-sha-256
host  all all ::1/128      scram-sha-256
HBA
	cl_chown "$host_data/pg_hba.conf"
}

cl_start() {
	if cl_running; then
		echo "$CL_NAME: already running on 127.0.0.1:$CL_PORT" >&2
	else
		mkdir -p "${CL_ROOT}/tmp"
		chmod 1777 "${CL_ROOT}/tmp"
		# dynamic_shared_memory_type=mmap: a chroot has no /dev/shm.
		cl_as_postgres "$CL_BIN/pg_ctl -D '$CL_DATA' -l '$CL_DATA/server.log' -w -t 60 \
			-o \"-c listen_addresses=127.0.0.1 -p $CL_PORT -c unix_socket_directories=/tmp \
			-c dynamic_shared_memory_type=mmap -c max_connections=300 -c shared_buffers=256MB \
			-c fsync=${CL_FSYNC:-on} $CL_OPTS\" start" >&2 ||
			{ tail -n 30 "${CL_ROOT}${CL_DATA}/server.log" >&2; cl_die "server did not start"; }
	fi
	cl_sql postgres "SELECT 1 FROM pg_database WHERE datname = '$CL_DB'" | grep -q 1 ||
		cl_sql postgres "CREATE DATABASE \"$CL_DB\"" >/dev/null
}

# cl_sql DB SQL: runs SQL as the superuser over the unix socket, so that
# nothing depends on quoting through su and chroot.
cl_sql() {
	printf '%s\n' "$2" | cl_as_postgres "$CL_BIN/psql -h /tmp -p $CL_PORT -U postgres -d '$1' -tAX -q -v ON_ERROR_STOP=1"
}

cl_stop() {
	if cl_running; then
		cl_as_postgres "$CL_BIN/pg_ctl -D '$CL_DATA' -m fast -w stop" >&2
	else
		echo "$CL_NAME: not running" >&2
	fi
}

cl_status() {
	if cl_running; then
		echo "$CL_NAME: running on 127.0.0.1:$CL_PORT (data $CL_ROOT$CL_DATA)"
		cl_url
	else
		echo "$CL_NAME: stopped"
		return 3
	fi
}

# cl_main ACTION: dispatches the common actions; up is the caller's
# provision step followed by cl_initdb + cl_start.
cl_main() {
	case "${1:-}" in
	down) cl_require_root; cl_stop ;;
	restart) cl_require_root; cl_stop; cl_start; cl_url ;;
	status) cl_require_root; cl_status ;;
	url) cl_url ;;
	psql) cl_require_root; shift; exec psql "$(cl_url)" "$@" ;;
	*) echo "usage: $0 up|down|restart|status|url|psql [psql args]" >&2; exit 2 ;;
	esac
}
