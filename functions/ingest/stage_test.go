package ingest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/testkit"
)

// The staging table keeps its rows' dead versions between batches (it is
// not truncated at commit); Writer.tidy's VACUUM must keep it from growing
// with every row a connection ever wrote.
func TestStagingTableStaysSmall(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		_, dsn := db.Login(t, "apigee_ingest")
		cfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		cfg.MaxConns = 1 // one backend, one staging table
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		w := NewWriter(pool)
		now := time.Now().UTC()
		const batch = 500
		pages := func() int {
			var n int
			if err := pool.QueryRow(ctx, "SELECT pg_relation_size('apigee_stage_calls') / 8192").Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		var before, most int
		for i := 0; i < 4*stageVacuumRows; i += batch {
			calls := make([]Call, batch)
			for j := range calls {
				calls[j] = testCall(fmt.Sprintf("stage-%d", i+j), "tenant-a", now.Add(-time.Duration(j)*time.Second))
			}
			if _, err := w.Write(ctx, &Batch{Calls: calls, Messages: batch}); err != nil {
				t.Fatal(err)
			}
			if i+batch < stageVacuumRows {
				before = pages() // what the rows take before any VACUUM
			}
			most = max(most, pages())
		}
		var left int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM apigee_stage_calls").Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left != 0 {
			t.Errorf("%d rows left in the staging table after the batches committed", left)
		}
		// Without VACUUM it would reach about 4 × before.
		if most > 2*before+1 {
			t.Errorf("staging table grew to %d pages (%d before the first VACUUM)", most, before)
		}
		if got := count(t, db, "SELECT count(*) FROM apigee.api_calls"); got != 4*stageVacuumRows {
			t.Errorf("%d rows stored, want %d", got, 4*stageVacuumRows)
		}
	})
}
