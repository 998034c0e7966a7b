package migrations_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pressly/goose/v3"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/migrations"
)

// rawIndexes are the indexes of apigee.api_calls, each justified in
// migration 00017 by the query that needs it: a new one must be too.
var rawIndexes = map[string]string{
	"api_calls_key":       "CREATE UNIQUE INDEX api_calls_key ON apigee.api_calls USING btree (received_at, apigee.call_key(message_id))",
	"api_calls_batch_idx": "CREATE INDEX api_calls_batch_idx ON apigee.api_calls USING btree (batch_id)",
}

func indexes(t *testing.T, db *testkit.DB) map[string]string {
	t.Helper()
	rows, err := db.Admin.Query(context.Background(),
		// A partitioned table's indexes are defined ON ONLY the parent.
		"SELECT indexname::text, replace(indexdef, ' ON ONLY ', ' ON ') FROM pg_indexes WHERE schemaname = 'apigee' AND tablename = 'api_calls'")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for rows.Next() {
		var name, def string
		if err := rows.Scan(&name, &def); err != nil {
			t.Fatal(err)
		}
		got[name] = def
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestRawRowIndexes(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		if got := indexes(t, db); !maps.Equal(got, rawIndexes) {
			t.Fatalf("apigee.api_calls has indexes\n%v\nwant\n%v", got, rawIndexes)
		}
	})
}

// TestRawRowKeyInPlace migrates an installation holding rows from 00016's
// primary key to 00017's key and back: rows stay, and a redelivery of a
// row stored before the migration is still a conflict, in its own chunk or
// partition and in one created after.
func TestRawRowKeyInPlace(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		p := provider(t, db)
		apply := func(up bool) {
			t.Helper()
			if _, err := p.ApplyVersion(ctx, 17, up); err != nil {
				t.Fatalf("00017 up=%v: %v", up, err)
			}
		}
		apply(false)
		if got := slices.Sorted(maps.Keys(indexes(t, db))); !slices.Contains(got, "api_calls_pkey") || len(got) != 5 {
			t.Fatalf("after 00017 down: indexes %v, want 00016's five", got)
		}
		old := time.Now().UTC().Truncate(time.Millisecond)
		insertCall(t, db.Admin, "before-1", "tenant-a", old)
		insertCall(t, db.Admin, "before-2", "tenant-a", old)
		apply(true)
		if n := countRows(t, db, "SELECT count(*) FROM apigee.api_calls"); n != 2 {
			t.Fatalf("%d rows after 00017, want 2", n)
		}
		// Another day is another chunk or partition, made after the index.
		later := old.AddDate(0, 0, 2)
		if _, err := db.Admin.Exec(ctx, "SELECT apigee.ensure_partitions($1::date, $1::date)", later); err != nil {
			t.Fatal(err)
		}
		insertCall(t, db.Admin, "after-1", "tenant-a", later)
		for _, k := range []struct {
			id string
			at time.Time
		}{{"before-1", old}, {"before-2", old}, {"after-1", later}} {
			_, err := db.Admin.Exec(ctx, `
				INSERT INTO apigee.api_calls (received_at, message_id, tenant, organization, environment, apiproxy,
					request_verb, request_path, response_status_code, batch_id)
				VALUES ($1, $2, 't', 'org', 'prod', 'p', 'GET', '/', 200, 1)`, k.at, k.id)
			var pg *pgconn.PgError
			if !errors.As(err, &pg) || pg.Code != pgerrcode.UniqueViolation {
				t.Fatalf("second %s: %v, want a unique violation", k.id, err)
			}
		}
		if n := countRows(t, db, "SELECT count(*) FROM apigee.api_calls"); n != 3 {
			t.Fatalf("%d rows, want 3", n)
		}
		apply(false)
		apply(true)
		if got := indexes(t, db); !maps.Equal(got, rawIndexes) {
			t.Fatalf("after down and up: %v", got)
		}
	})
}

// provider is a migration provider over db, closed at cleanup, for tests
// that move one migration down and up again.
func provider(t *testing.T, db *testkit.DB) *goose.Provider {
	t.Helper()
	sqlDB, err := migrations.Open(db.URL, migrations.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sqlDB.Close() })
	p, err := migrations.NewProvider(sqlDB)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func countRows(t *testing.T, db *testkit.DB, sql string) int {
	t.Helper()
	var n int
	if err := db.Admin.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
