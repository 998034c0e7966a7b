// Package reliability is the reliability suite: Go tests, each with hard
// assertions, that push real traffic through the Pub/Sub push relay
// (deploy/local/standin/pushrelay over pstest) into the real functions (built from
// ./functions/... and run as child processes, or served in process where a
// test must hand the function a collaborator, such as push authentication
// keys from a local signer) against TimescaleDB, while something goes
// wrong:
//
//   - the database restarts during load: 0 rows lost, 0 duplicated;
//   - every message is delivered three times at once: one row each;
//   - 10,000 malformed messages among good traffic: each quarantined with
//     its reason, all acknowledged, the good traffic stored;
//   - the ingest credentials are rotated every few seconds during load:
//     0 failed deliveries;
//   - the ingest process gets SIGTERM during load: nothing acknowledged
//     is missing, the rest is redelivered and lands once;
//   - invalid, expired, wrong-audience and wrong-email tokens: 401, 0 rows;
//   - a lock held on apigee.api_calls for seconds: non-ack answers within
//     the deadline, bounded memory, recovery without a restart.
//
// The tests restart and lock the database, so they run against a private
// cluster, never the shared test servers: RELIABILITY_TIMESCALEDB_URL is
// its superuser URL and RELIABILITY_TSDB_DATA its data directory (for
// deploy/local/timescaledb.sh restart). They are behind the build tag
// "reliability" so that `go test ./...` does not run them next to other
// packages; `make reliability` starts the cluster and runs them:
//
//	TSDB_PORT=55442 TSDB_DATA=/var/lib/apigee/reliability deploy/local/timescaledb.sh up
//	RELIABILITY_TIMESCALEDB_URL=postgres://postgres:apigee-local@127.0.0.1:55442/postgres?sslmode=disable \
//	RELIABILITY_TSDB_DATA=/var/lib/apigee/reliability \
//	  go test -tags reliability -count=1 -v ./deploy/local/reliability/
//
// Without the variables the tests skip, except under CI=true, where they
// fail.
package reliability
