package rotate_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/functions/ingest"
	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/secrets"
)

// callRecord renders one valid apigee.call.v1 record.
func callRecord(id string, at time.Time) string {
	return "{" + strings.Join([]string{
		`"schema":"apigee.call.v1"`,
		fmt.Sprintf(`"message_id":%q`, id),
		fmt.Sprintf(`"received_at":"%s"`, at.UTC().Format(time.RFC3339Nano)),
		`"organization":"acme"`, `"environment":"prod"`, `"apiproxy":"orders-v1"`,
		`"request_verb":"get"`, `"request_path":"/orders/42"`, `"response_status_code":"200"`,
		`"total_response_time":"37"`, `"tenant":"tenant-a"`,
	}, ",") + "}"
}

// TestRotationUnderIngestLoad rotates ten times while the ingest function,
// configured with DB_SECRET on the same (fake) Secret Manager, stores a
// continuous stream of deliveries. Time is compressed: connections live
// 150ms instead of 30m and rotations come every 300ms, so the ingest pool
// opens connections with stale credentials all the time and must re-read
// the secret. Every delivery must be stored (204), no row lost, and a
// monitor logging in with the newest version every few milliseconds must
// never fail.
func TestRotationUnderIngestLoad(t *testing.T) {
	const (
		rotations = 10
		workers   = 4
	)
	for _, kind := range testkit.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, kind)
			ctx := context.Background()
			f.rotate(t) // bootstrap: the secret starts empty

			ingDB, err := dbconn.Open(ctx, dbconn.Config{
				DBSecret:              f.secret,
				SecretManagerEndpoint: f.smAddr,
				MaxConns:              4,
				MaxConnLifetime:       150 * time.Millisecond,
				ApplicationName:       "ingest-under-rotation",
			}, dbconn.WithMinRefreshInterval(100*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(ingDB.Close)
			icfg, err := ingest.ConfigFromEnv()
			if err != nil {
				t.Fatal(err)
			}
			isvc, err := ingest.NewService(icfg, ingest.Deps{DB: ingDB})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = isvc.Close(context.Background()) })

			stop := make(chan struct{})
			var sent, failed atomic.Int64
			var failMu sync.Mutex
			var failures []string
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						id := fmt.Sprintf("w%d-%d", w, i)
						r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(wrapped("ps-"+id, callRecord(id, time.Now()), nil)))
						rec := httptest.NewRecorder()
						isvc.ServeHTTP(rec, r)
						sent.Add(1)
						if rec.Code != http.StatusNoContent {
							failed.Add(1)
							failMu.Lock()
							failures = append(failures, fmt.Sprintf("%s: %d %s", id, rec.Code, strings.TrimSpace(rec.Body.String())))
							failMu.Unlock()
						}
					}
				})
			}

			// The monitor: the newest version must log in at every moment.
			var checks, monitorFailures atomic.Int64
			var monitorErr atomic.Value
			consumerVersions := sync.Map{}
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
					consumerVersions.Store(ingDB.CredentialsVersion(), true)
					c, v, err := secrets.Read(ctx, f.client, f.secret)
					if err == nil {
						if err = f.login(ctx, c); err != nil {
							err = fmt.Errorf("%s: %w", v, err)
						}
					}
					checks.Add(1)
					if err != nil {
						monitorFailures.Add(1)
						monitorErr.Store(err.Error())
					}
				}
			})

			start := time.Now()
			for range rotations {
				time.Sleep(300 * time.Millisecond)
				f.rotate(t)
			}
			// Let the consumer meet the last rotation before stopping.
			time.Sleep(400 * time.Millisecond)
			close(stop)
			wg.Wait()
			elapsed := time.Since(start)

			if n := failed.Load(); n > 0 {
				failMu.Lock()
				t.Errorf("%d of %d deliveries failed, e.g. %v", n, sent.Load(), failures[:min(3, len(failures))])
				failMu.Unlock()
			}
			var rows int64
			if err := f.db.Admin.QueryRow(ctx, "SELECT count(*) FROM apigee.api_calls").Scan(&rows); err != nil {
				t.Fatal(err)
			}
			if rows != sent.Load() {
				t.Errorf("%d rows stored, %d deliveries sent", rows, sent.Load())
			}
			if n := monitorFailures.Load(); n > 0 {
				t.Errorf("the newest version failed to log in %d of %d times, last: %v", n, checks.Load(), monitorErr.Load())
			}
			var versions []string
			consumerVersions.Range(func(k, _ any) bool { versions = append(versions, k.(string)); return true })
			// The consumer starts on version 1 and must follow the rotations
			// by re-reading the secret when its login is re-passworded.
			if len(versions) < 3 {
				t.Errorf("ingest used only the credentials of %v: the rotation never forced it to re-read", versions)
			}
			newest := f.versions(t)
			if cur := ingDB.CredentialsVersion(); cur != newest[0].GetName() && cur != newest[1].GetName() {
				t.Errorf("ingest ends on %s, want one of the two newest versions", cur)
			}
			f.checkConsistent(t)
			if len(newest) != rotations+1 {
				t.Errorf("%d versions, want %d", len(newest), rotations+1)
			}
			t.Logf("%s: %d rotations in %v, %d deliveries (%d failed), %d rows, %d monitor logins (%d failed), ingest used %d credential versions",
				kind, rotations, elapsed.Round(time.Millisecond), sent.Load(), failed.Load(), rows, checks.Load(), monitorFailures.Load(), len(versions))
		})
	}
}
