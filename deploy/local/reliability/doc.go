// Package reliability is the reliability suite: Go tests, each with hard
// assertions, that push real traffic through the Pub/Sub push relay
// (deploy/local/standin/pushrelay over pstest) into the real functions (built from
// ./functions/... and run as child processes, or served in process where a
// test must hand the function a collaborator, such as push authentication
// keys from a local signer), each test once on TimescaleDB and once on
// plain PostgreSQL (what Cloud SQL runs), while something goes wrong:
//
//   - the database restarts during load: 0 rows lost, 0 duplicated;
//   - every message is delivered three times at once: one row each;
//   - 10,000 malformed messages among good traffic: each quarantined with
//     its reason, all acknowledged, the good traffic stored;
//   - the ingest credentials are rotated every few seconds during load:
//     0 failed deliveries;
//   - the ingest process gets SIGTERM during load: nothing acknowledged
//     is missing, the rest is redelivered and lands once;
//   - the ingest process gets SIGKILL during load (no drain at all): the
//     same;
//   - invalid, expired, wrong-audience and wrong-email tokens: 401, 0 rows;
//   - a lock held on apigee.api_calls for seconds: non-ack answers within
//     the deadline, bounded memory, recovery without a restart;
//   - other clients take every connection slot: 429/503 within the
//     deadline, no crash, everything stored once the slots free up;
//   - the network between ingest and the database stops for 30 s, longer
//     than the statement timeout (testkit.Proxy holding every byte):
//     answers within the deadline, the same process recovers;
//   - rollup runs again and again during a sustained load while retention
//     drops old chunks: no failed run, no deadlock, exact totals;
//   - a failover with the password rotated during the outage: ingest logs
//     in with the new secret version by itself.
//
// The tests restart, fill and lock their databases, so they run against
// private clusters, never the shared test servers: RELIABILITY_TIMESCALEDB_URL
// and RELIABILITY_POSTGRES_URL are their superuser URLs, RELIABILITY_TSDB_DATA
// and RELIABILITY_PG_DATA their data directories (for
// deploy/local/timescaledb.sh and postgres.sh restart). They are behind the
// build tag "reliability" so that `go test ./...` does not run them next to
// other packages; `make reliability` starts the clusters and runs them:
//
//	TSDB_PORT=55442 TSDB_DATA=/var/lib/apigee/reliability deploy/local/timescaledb.sh up
//	PG_PORT=55443 PG_DATA_DIR=/var/lib/apigee-timescale/reliability-pg deploy/local/postgres.sh up
//	RELIABILITY_TIMESCALEDB_URL=postgres://postgres:apigee-local@127.0.0.1:55442/apigee?sslmode=disable \
//	RELIABILITY_TSDB_DATA=/var/lib/apigee/reliability \
//	RELIABILITY_POSTGRES_URL=postgres://postgres:apigee-local@127.0.0.1:55443/apigee?sslmode=disable \
//	RELIABILITY_PG_DATA=/var/lib/apigee-timescale/reliability-pg \
//	  go test -tags reliability -count=1 -v ./deploy/local/reliability/
//
// Without the variables the tests skip, except under CI=true, where they
// fail. TestSoak (build tags reliability and soak, `make soak`) is the
// long steady run, not part of CI.
package reliability
