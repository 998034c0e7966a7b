package rollup

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"apigee-timescale/deploy/local/testkit"
)

// TestRowLevelSecurity: a reader granted tenant A sees tenant A's rollup
// rows, view rows and anomalies, and nothing of tenant B, however it asks.
func TestRowLevelSecurity(t *testing.T) {
	t.Parallel()
	relations := []string{"api_calls_1m", "api_calls_1h", "proxy_calls_1m", "proxy_calls_1h", "app_calls_1m", "app_calls_1h", "proxy_latency_1m", "proxy_latency_1h", "proxy_latency_1d",
		"error_rate_1m", "error_rate_1h", "anomalies"}
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		// Rows over three days so several rollup chunks/partitions exist.
		rng := rand.New(rand.NewPCG(21, 22))
		for d := 0; d < 3; d++ {
			insertCalls(t, db, mixedCalls(rng, time.Now().UTC().Add(-time.Duration(d)*24*time.Hour-time.Hour), 5, 20))
		}
		mustRun(t, newTestRunner(t, db, testConfig(), nil))
		if _, err := db.Admin.Exec(ctx, `INSERT INTO apigee.anomalies (bucket_start, tenant, organization, environment, apiproxy,
				metric, observed, baseline, scale, score, calls, baseline_minutes)
			VALUES (now(), 'tenant-a', 'org', 'prod', 'orders', 'error_rate', 0.5, 0.01, 0.01, 49, 100, 60),
			       (now(), 'tenant-b', 'org', 'prod', 'orders', 'error_rate', 0.5, 0.01, 0.01, 49, 100, 60)`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Admin.Exec(ctx, "ANALYZE apigee.api_calls_1m; ANALYZE apigee.api_calls_1h; ANALYZE apigee.proxy_calls_1m; ANALYZE apigee.proxy_calls_1h; ANALYZE apigee.app_calls_1m; ANALYZE apigee.app_calls_1h"); err != nil {
			t.Fatal(err)
		}

		readerRole, readerDSN := db.Login(t, "apigee_reader")
		if _, err := db.Admin.Exec(ctx, "INSERT INTO apigee.tenant_grants VALUES ($1, 'tenant-a')", readerRole); err != nil {
			t.Fatal(err)
		}
		reader := testkit.Connect(t, readerDSN)
		_, strangerDSN := db.Login(t, "apigee_reader")
		stranger := testkit.Connect(t, strangerDSN)

		for _, rel := range relations {
			t.Run(rel, func(t *testing.T) {
				want := queryInt(t, db.Admin, "SELECT count(*) FROM apigee."+rel+" WHERE tenant = 'tenant-a'")
				if want == 0 {
					t.Fatalf("no tenant-a rows in %s to compare", rel)
				}
				counts := tenantCounts(t, reader, "SELECT tenant, count(*) FROM apigee."+rel+" GROUP BY tenant")
				if len(counts) != 1 || counts["tenant-a"] != want {
					t.Fatalf("reader granted tenant-a sees %v, want only tenant-a's %d rows", counts, want)
				}
				if n := queryInt(t, stranger, "SELECT count(*) FROM apigee."+rel); n != 0 {
					t.Fatalf("reader without grants sees %d rows", n)
				}
			})
		}
		t.Run("chunks and partitions directly", func(t *testing.T) {
			rows, err := db.Admin.Query(ctx, `SELECT i.inhrelid::regclass::text FROM pg_inherits i
				WHERE i.inhparent IN ('apigee.api_calls_1m'::regclass, 'apigee.api_calls_1h'::regclass,
					'apigee.proxy_calls_1m'::regclass, 'apigee.proxy_calls_1h'::regclass,
					'apigee.app_calls_1m'::regclass, 'apigee.app_calls_1h'::regclass)`)
			if err != nil {
				t.Fatal(err)
			}
			children, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			if len(children) < 3 {
				t.Fatalf("only %d rollup chunks/partitions: %v", len(children), children)
			}
			for _, c := range children {
				var n int
				err := reader.QueryRow(ctx, "SELECT count(*) FROM "+c+" WHERE tenant = 'tenant-b'").Scan(&n)
				var pg *pgconn.PgError
				if err == nil || !errors.As(err, &pg) || pg.Code != "42501" {
					t.Errorf("reader reading %s: %d rows, err %v; want permission denied", c, n, err)
				}
				if n := queryInt(t, db.Admin, "SELECT count(*) FROM information_schema.role_table_grants WHERE table_schema || '.' || table_name = $1 AND grantee IN ('apigee_reader', 'PUBLIC')", c); n != 0 {
					t.Errorf("%s carries %d grants to readers", c, n)
				}
			}
		})
		t.Run("planner statistics", func(t *testing.T) {
			n := queryInt(t, reader, `SELECT count(*) FROM pg_stats WHERE attname = 'tenant'
				AND (most_common_vals::text LIKE '%tenant-b%' OR histogram_bounds::text LIKE '%tenant-b%')`)
			if n != 0 {
				t.Fatalf("pg_stats shows tenant-b to the reader in %d rows", n)
			}
		})
	})
}

func tenantCounts(t *testing.T, conn *pgx.Conn, sql string) map[string]int64 {
	t.Helper()
	rows, err := conn.Query(context.Background(), sql)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	var tenant string
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&tenant, &n}, func() error { out[tenant] = n; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}
