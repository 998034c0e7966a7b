package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/migrations"
)

func TestUpIsIdempotent(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		n, err := migrations.Up(context.Background(), db.URL, migrations.Options{})
		if err != nil {
			t.Fatalf("second up: %v", err)
		}
		if n != 0 {
			t.Fatalf("second up applied %d migrations, want 0", n)
		}
	})
}

func TestStorage(t *testing.T) {
	ctx := context.Background()
	t.Run("timescaledb hypertables with 1-day chunks in the closed schema", func(t *testing.T) {
		db := testkit.New(t, testkit.TimescaleDB)
		assertSetting(t, db, "storage", "timescaledb")
		for _, table := range []string{"api_calls", "ingest_rejects"} {
			var interval time.Duration
			var schema string
			err := db.Admin.QueryRow(ctx, `
				SELECT d.time_interval, h.associated_schema_name
				FROM timescaledb_information.dimensions d
				JOIN _timescaledb_catalog.hypertable h ON h.schema_name = d.hypertable_schema AND h.table_name = d.hypertable_name
				WHERE d.hypertable_schema = 'apigee' AND d.hypertable_name = $1 AND d.column_name = 'received_at'`,
				table).Scan(&interval, &schema)
			if err != nil {
				t.Fatalf("%s is not a hypertable on received_at: %v", table, err)
			}
			if interval != 24*time.Hour || schema != "apigee_chunks" {
				t.Errorf("%s: chunk interval %v in schema %s, want 24h in apigee_chunks", table, interval, schema)
			}
		}
	})
	t.Run("postgres daily partitions created ahead", func(t *testing.T) {
		db := testkit.New(t, testkit.Postgres)
		assertSetting(t, db, "storage", "partitioned")
		for _, table := range []string{"api_calls", "ingest_rejects"} {
			for d := -1; d <= 7; d++ {
				day := time.Now().UTC().AddDate(0, 0, d).Format("20060102")
				var ok bool
				if err := db.Admin.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", "apigee_chunks."+table+"_"+day).Scan(&ok); err != nil || !ok {
					t.Errorf("partition %s_%s missing (err %v)", table, day, err)
				}
			}
		}
		// A row far outside the created range gets its partition on demand.
		if _, err := db.Admin.Exec(ctx, "SELECT apigee.ensure_partitions('2020-02-01', '2020-02-01')"); err != nil {
			t.Fatal(err)
		}
		insertCall(t, db.Admin, "old", "tenant-a", time.Date(2020, 2, 1, 12, 0, 0, 0, time.UTC))
	})
	t.Run("partitioned storage can be forced on a TimescaleDB server", func(t *testing.T) {
		db := testkit.New(t, testkit.TimescaleDB, migrations.Options{Storage: "partitioned"})
		assertSetting(t, db, "storage", "partitioned")
	})
}

func assertSetting(t *testing.T, db *testkit.DB, key, want string) {
	t.Helper()
	var got string
	if err := db.Admin.QueryRow(context.Background(), "SELECT value FROM apigee.settings WHERE key = $1", key).Scan(&got); err != nil {
		t.Fatalf("setting %s: %v", key, err)
	}
	if got != want {
		t.Fatalf("setting %s = %q, want %q", key, got, want)
	}
}

type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

var callSeq int

func insertCall(t testing.TB, c execer, id, tenant string, at time.Time) {
	t.Helper()
	callSeq++
	_, err := c.Exec(context.Background(), `
		INSERT INTO apigee.api_calls (received_at, message_id, tenant, organization, environment, apiproxy,
			request_verb, request_path, response_status_code, batch_id, developer_email)
		VALUES ($1, $2, $3, 'org', 'prod', 'orders-v1', 'GET', '/orders', 200, $4, $5)`,
		at, id, tenant, callSeq, "dev@"+tenant+".example")
	if err != nil {
		t.Fatalf("insert %s: %v", id, err)
	}
}

// TestRoleActions is the role × action table: each cell is a real statement
// run as a login that belongs to one group role, in a transaction that is
// rolled back.
func TestRoleActions(t *testing.T) {
	const (
		allow = true
		deny  = false
	)
	roles := []string{"apigee_ingest", "apigee_rollup", "apigee_reader", "apigee_rotate", "none"}
	now := time.Now().UTC().Format(time.RFC3339)
	insert := fmt.Sprintf(`INSERT INTO apigee.api_calls (received_at, message_id, tenant, organization, environment, apiproxy,
		request_verb, request_path, response_status_code, batch_id) VALUES ('%s', 'new-1', 'tenant-a', 'org', 'prod', 'p', 'GET', '/', 200, 1)`, now)
	cases := []struct {
		action string
		sql    string
		want   map[string]bool // role → allowed; roles not listed are denied
	}{
		{"insert api_calls", insert, map[string]bool{"apigee_ingest": allow}},
		{"insert api_calls returning key", insert + " ON CONFLICT DO NOTHING RETURNING message_id, received_at", map[string]bool{"apigee_ingest": allow}},
		{"select api_calls", "SELECT * FROM apigee.api_calls", map[string]bool{"apigee_rollup": allow, "apigee_reader": allow}},
		{"update api_calls", "UPDATE apigee.api_calls SET tenant = 'x'", nil},
		{"delete api_calls", "DELETE FROM apigee.api_calls", nil},
		{"truncate api_calls", "TRUNCATE apigee.api_calls", nil},
		{"insert ingest_rejects", fmt.Sprintf(`INSERT INTO apigee.ingest_rejects (received_at, dedupe_key, tenant, reason, detail, record_index, payload, payload_sha256, batch_id)
			VALUES ('%s', 'k', 't', 'not_json', 'd', 0, '\x00', '\x00', 1)`, now), map[string]bool{"apigee_ingest": allow}},
		{"select ingest_rejects", "SELECT * FROM apigee.ingest_rejects", map[string]bool{"apigee_rollup": allow, "apigee_reader": allow}},
		{"delete ingest_rejects", "DELETE FROM apigee.ingest_rejects", nil},
		{"insert ingest_batches", `INSERT INTO apigee.ingest_batches (batch_id, rows_inserted, rows_duplicate, rows_rejected, messages, rows_sha256)
			VALUES (nextval('apigee.ingest_batch_id_seq'), 0, 0, 0, 0, '\x00')`, map[string]bool{"apigee_ingest": allow}},
		{"update ingest_batches", "UPDATE apigee.ingest_batches SET messages = 0", nil},
		{"insert rollup_invalidations", "INSERT INTO apigee.rollup_invalidations (batch_id, bucket_start) VALUES (1, now())", map[string]bool{"apigee_ingest": allow}},
		{"delete rollup_invalidations", "DELETE FROM apigee.rollup_invalidations", map[string]bool{"apigee_rollup": allow}},
		{"read tenant_grants", "SELECT * FROM apigee.tenant_grants", nil},
		{"grant self a tenant", "INSERT INTO apigee.tenant_grants (role_name, tenant) VALUES (current_user, 'tenant-b')", nil},
		{"ensure partitions", "SELECT apigee.ensure_partitions(current_date, current_date + 1)", map[string]bool{"apigee_ingest": allow, "apigee_rollup": allow}},
		{"harden chunks", "SELECT apigee.harden_chunks()", map[string]bool{"apigee_ingest": allow, "apigee_rollup": allow}},
		{"re-password an ingest login", "SELECT apigee.set_login_password('apigee_ingest_a', 'SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb=', now() + interval '1 day')", map[string]bool{"apigee_rotate": allow}},
		{"re-password the superuser", "SELECT apigee.set_login_password('postgres', repeat('x', 40), now() + interval '1 day')", nil},
		{"alter role directly", "ALTER ROLE apigee_ingest_a PASSWORD 'whatever-whatever-whatever-whatever'", nil},
		{"create table in apigee", "CREATE TABLE apigee.mine (x int)", nil},
		{"create table in chunk schema", "CREATE TABLE apigee_chunks.mine (x int)", nil},
	}
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		insertCall(t, db.Admin, "seed-1", "tenant-a", time.Now())
		conns := map[string]*pgx.Conn{}
		for _, r := range roles {
			var groups []string
			if r != "none" {
				groups = []string{r}
			}
			login, dsn := db.Login(t, groups...)
			if r == "apigee_reader" {
				if _, err := db.Admin.Exec(ctx, "INSERT INTO apigee.tenant_grants VALUES ($1, 'tenant-a')", login); err != nil {
					t.Fatal(err)
				}
			}
			conns[r] = testkit.Connect(t, dsn)
		}
		for _, c := range cases {
			for _, r := range roles {
				t.Run(c.action+"/"+r, func(t *testing.T) {
					want := c.want[r]
					err := inRolledBackTx(ctx, conns[r], c.sql)
					switch {
					case want && err != nil:
						t.Errorf("%s should be allowed for %s: %v", c.action, r, err)
					case !want && err == nil:
						t.Errorf("%s should be denied for %s, but succeeded", c.action, r)
					case !want && !isDenied(err):
						t.Errorf("%s for %s failed, but not as a denial: %v", c.action, r, err)
					}
				})
			}
		}
	})
}

func inRolledBackTx(ctx context.Context, conn *pgx.Conn, sql string) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	rows, err := tx.Query(ctx, sql)
	if err != nil {
		return err
	}
	for rows.Next() {
	}
	rows.Close()
	return rows.Err()
}

// isDenied reports whether err is a privilege refusal (42501), which is what
// every denied cell must produce, rather than some unrelated failure.
func isDenied(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == "42501"
}

func TestRowLevelSecurity(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		_, ingestDSN := db.Login(t, "apigee_ingest")
		ingest := testkit.Connect(t, ingestDSN)
		// Rows over several days so several chunks/partitions exist.
		if _, err := db.Admin.Exec(ctx, "SELECT apigee.ensure_partitions(current_date - 3, current_date)"); err != nil {
			t.Fatal(err)
		}
		for d := 0; d < 3; d++ {
			at := time.Now().UTC().Add(-time.Duration(d) * 24 * time.Hour)
			insertCall(t, ingest, fmt.Sprintf("a-%d", d), "tenant-a", at)
			insertCall(t, ingest, fmt.Sprintf("b-%d", d), "tenant-b", at)
		}
		if _, err := db.Admin.Exec(ctx, "INSERT INTO apigee.ingest_rejects (received_at, dedupe_key, tenant, reason, detail, record_index, payload, payload_sha256, batch_id) VALUES (now(), 'k1', 'tenant-b', 'not_json', 'd', 0, 'x', 'x', 1)"); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Admin.Exec(ctx, "ANALYZE apigee.api_calls; SELECT apigee.harden_chunks()"); err != nil {
			t.Fatal(err)
		}
		// Tenant A is granted through a group role the reader belongs to.
		group := "g_" + strings.ToLower(db.Name[len(db.Name)-8:])
		if _, err := db.Admin.Exec(ctx, "CREATE ROLE "+group+" NOLOGIN IN ROLE apigee_reader"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+group) })
		if _, err := db.Admin.Exec(ctx, "INSERT INTO apigee.tenant_grants VALUES ($1, 'tenant-a')", group); err != nil {
			t.Fatal(err)
		}
		_, readerDSN := db.Login(t, group)
		reader := testkit.Connect(t, readerDSN)
		_, strangerDSN := db.Login(t, "apigee_reader")
		stranger := testkit.Connect(t, strangerDSN)

		t.Run("through the table", func(t *testing.T) {
			counts := map[string]int{}
			rows, err := reader.Query(ctx, "SELECT tenant, count(*) FROM apigee.api_calls GROUP BY tenant")
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var tn string
				var n int
				if err := rows.Scan(&tn, &n); err != nil {
					t.Fatal(err)
				}
				counts[tn] = n
			}
			if rows.Err() != nil {
				t.Fatal(rows.Err())
			}
			if counts["tenant-a"] != 3 || counts["tenant-b"] != 0 {
				t.Fatalf("reader granted tenant-a sees %v, want 3 rows of tenant-a and none of tenant-b", counts)
			}
			var n int
			if err := stranger.QueryRow(ctx, "SELECT count(*) FROM apigee.api_calls").Scan(&n); err != nil || n != 0 {
				t.Fatalf("reader with no grant sees %d rows (err %v), want 0", n, err)
			}
			if err := reader.QueryRow(ctx, "SELECT count(*) FROM apigee.ingest_rejects").Scan(&n); err != nil || n != 0 {
				t.Fatalf("reader sees %d rejects of tenant-b (err %v), want 0", n, err)
			}
		})
		t.Run("through every chunk or partition", func(t *testing.T) {
			children := childTables(t, db)
			if len(children) < 3 {
				t.Fatalf("expected at least 3 chunks/partitions, found %v", children)
			}
			for _, c := range children {
				var n int
				err := reader.QueryRow(ctx, "SELECT count(*) FROM "+c+" WHERE tenant = 'tenant-b'").Scan(&n)
				if err == nil && n > 0 {
					t.Errorf("reader read %d tenant-b rows directly from %s", n, c)
				}
				if err != nil && !isDenied(err) {
					t.Errorf("reading %s: unexpected error %v", c, err)
				}
			}
		})
		t.Run("through the _timescaledb_internal hole", func(t *testing.T) {
			var n int
			err := reader.QueryRow(ctx, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '_timescaledb_internal' AND c.relname LIKE '\\_hyper%' AND c.relkind = 'r'").Scan(&n)
			if err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Fatalf("%d chunk tables live in _timescaledb_internal, which PUBLIC may use", n)
			}
		})
		t.Run("through planner statistics", func(t *testing.T) {
			var leaked int
			err := reader.QueryRow(ctx, `SELECT count(*) FROM pg_stats
				WHERE attname IN ('tenant', 'developer_email', 'message_id')
				  AND (most_common_vals::text LIKE '%tenant-b%' OR histogram_bounds::text LIKE '%tenant-b%'
				       OR most_common_vals::text LIKE '%b-%' OR histogram_bounds::text LIKE '%b-%')`).Scan(&leaked)
			if err != nil {
				t.Fatal(err)
			}
			if leaked != 0 {
				t.Fatalf("pg_stats shows tenant-b values to the reader in %d rows", leaked)
			}
		})
	})
}

func childTables(t *testing.T, db *testkit.DB) []string {
	t.Helper()
	rows, err := db.Admin.Query(context.Background(), `
		SELECT i.inhrelid::regclass::text FROM pg_inherits i
		WHERE i.inhparent = 'apigee.api_calls'::regclass`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestAppendOnly proves raw rows cannot be changed even by a role that was
// (wrongly) granted UPDATE, DELETE and TRUNCATE: the triggers refuse, and
// only the owner may.
func TestAppendOnly(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		insertCall(t, db.Admin, "x-1", "tenant-a", time.Now())
		role, dsn := db.Login(t, "apigee_ingest")
		for _, table := range []string{"api_calls", "ingest_rejects", "ingest_batches"} {
			if _, err := db.Admin.Exec(ctx, fmt.Sprintf("GRANT SELECT, UPDATE, DELETE, TRUNCATE ON apigee.%s TO %s", table, role)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := db.Admin.Exec(ctx, "CREATE POLICY all_rows ON apigee.api_calls TO "+role+" USING (true)"); err != nil {
			t.Fatal(err)
		}
		conn := testkit.Connect(t, dsn)
		for _, stmt := range []string{
			"UPDATE apigee.api_calls SET tenant = 'tenant-b'",
			"DELETE FROM apigee.api_calls",
			"TRUNCATE apigee.api_calls",
			"TRUNCATE apigee.ingest_rejects",
			"TRUNCATE apigee.ingest_batches",
		} {
			t.Run(stmt, func(t *testing.T) {
				err := inRolledBackTx(ctx, conn, stmt)
				if err == nil || !strings.Contains(err.Error(), "append-only") {
					t.Fatalf("%s: got %v, want the append-only refusal", stmt, err)
				}
			})
		}
		var n int
		if err := db.Admin.QueryRow(ctx, "SELECT count(*) FROM apigee.api_calls WHERE tenant = 'tenant-a'").Scan(&n); err != nil || n != 1 {
			t.Fatalf("row changed: %d tenant-a rows (err %v)", n, err)
		}
		t.Run("owner may", func(t *testing.T) {
			tx, err := db.Admin.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			if _, err := tx.Exec(ctx, "SET LOCAL ROLE apigee_owner"); err != nil {
				t.Fatal(err)
			}
			if tag, err := tx.Exec(ctx, "DELETE FROM apigee.api_calls WHERE message_id = 'x-1'"); err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("owner delete: %v (%d rows)", err, tag.RowsAffected())
			}
		})
	})
}
