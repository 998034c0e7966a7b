package ingest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/migrations"
)

// BenchmarkWrite writes batches of 80 rows (what 256 concurrent
// single-record deliveries make) and of 1,000 through one connection as
// the ingest role, and reports, besides rows/s, the PostgreSQL backend's
// CPU per row when the server runs on this machine (read from /proc):
// the difference between the two sizes is the fixed cost of a batch.
// schema=00016 is the raw table before migration 00017 (its down
// migration: the primary key on message_id and four more indexes), for
// the before and after of one run.
//
//	go test -run '^$' -bench BenchmarkWrite -benchtime 20000x ./functions/ingest/
func BenchmarkWrite(b *testing.B) {
	for _, schema := range []string{"00016", "00017"} {
		for _, size := range []int{80, 1000} {
			b.Run(fmt.Sprintf("schema=%s/rows=%d", schema, size), func(b *testing.B) {
				db := testkit.New(b, testkit.TimescaleDB)
				if schema == "00016" {
					undoRawIndexes(b, db)
				}
				now := time.Now().UTC()
				benchWrite(b, db, size, func(i int) Call {
					return testCall(fmt.Sprintf("bench-%d", i), "tenant-a", now.Add(-time.Duration(i%60)*time.Second))
				})
			})
		}
	}
}

// BenchmarkWriteIndexes is the ingest CPU and the bytes of each index of
// apigee.api_calls, one at a time, in batches of 1,000: the raw table of migration 00017
// without its batch_id index, with it, and with each index 00017 dropped
// added back; the difference to "key+batch_id" is that index's cost.
// schema=00016 is the raw table before 00017, all five.
//
//	go test -run '^$' -bench BenchmarkWriteIndexes -benchtime 50000x ./functions/ingest/
func BenchmarkWriteIndexes(b *testing.B) {
	for _, v := range []struct{ name, ddl string }{
		{"schema=00016", ""},
		{"key", "DROP INDEX apigee.api_calls_batch_idx"},
		{"key+batch_id", ""},
		{"key+batch_id_brin", "DROP INDEX apigee.api_calls_batch_idx; CREATE INDEX ON apigee.api_calls USING brin (batch_id) WITH (pages_per_range = 32)"},
		{"key+batch_id+received_at", "CREATE INDEX ON apigee.api_calls (received_at DESC)"},
		{"key+batch_id+apiproxy", "CREATE INDEX ON apigee.api_calls (apiproxy, received_at DESC)"},
		{"key+batch_id+tenant", "CREATE INDEX ON apigee.api_calls (tenant, received_at DESC)"},
		{"key+batch_id+pkey_00016", "ALTER TABLE apigee.api_calls ADD PRIMARY KEY (message_id, received_at)"},
	} {
		b.Run(v.name, func(b *testing.B) {
			db := testkit.New(b, testkit.TimescaleDB)
			if v.name == "schema=00016" {
				undoRawIndexes(b, db)
			}
			if v.ddl != "" {
				if _, err := db.Admin.Exec(context.Background(), v.ddl); err != nil {
					b.Fatal(err)
				}
			}
			// Calls as TestRowBytes writes them (40 proxies, 7 tenants),
			// 20 a millisecond as a busy gateway makes them.
			day := time.Now().UTC().Truncate(24 * time.Hour).Add(time.Hour)
			benchWrite(b, db, 1000, func(i int) Call {
				return benchCall("5d0c7e1a", i, day.Add(time.Duration(i)*50*time.Microsecond))
			})
		})
	}
}

// BenchmarkWriteIdleGap is BenchmarkWrite's batches with the connection
// idle for gap between them, as the push path's are at 64 deliveries in
// flight (its batch waits INGEST_BATCH_MAX_WAIT, about 5 ms, for the next
// deliveries after the last were answered): the same statements cost the
// backend more CPU per row after an idle gap (caches and the CPU's clock
// gone cold on a shared machine), which is most of what make bench's push
// ÷ batch ratio at 64 in flight measures beyond this benchmark's
// rows=80 ÷ rows=1000.
//
//	go test -run '^$' -bench BenchmarkWriteIdleGap -benchtime 19200x ./functions/ingest/
func BenchmarkWriteIdleGap(b *testing.B) {
	for _, size := range []int{64, 1000} {
		for _, gap := range []time.Duration{0, 2 * time.Millisecond, 8 * time.Millisecond} {
			b.Run(fmt.Sprintf("rows=%d/gap=%v", size, gap), func(b *testing.B) {
				db := testkit.New(b, testkit.TimescaleDB)
				now := time.Now().UTC()
				benchWriteGap(b, db, size, gap, func(i int) Call {
					return testCall(fmt.Sprintf("bench-%d", i), "tenant-a", now.Add(-time.Duration(i%60)*time.Second))
				})
			})
		}
	}
}

func benchWrite(b *testing.B, db *testkit.DB, size int, call func(i int) Call) {
	benchWriteGap(b, db, size, 0, call)
}

// benchWriteGap writes b.N calls in batches of size, sleeping gap (outside
// the timer) between batches.
func benchWriteGap(b *testing.B, db *testkit.DB, size int, gap time.Duration, call func(i int) Call) {
	pool, pid := oneBackend(b, db)
	w := NewWriter(pool)
	calls := make([]Call, b.N)
	for i := range calls {
		calls[i] = call(i)
	}
	cpu0, cpuOK := testkit.BackendCPU(pid)
	b.ResetTimer()
	for lo := 0; lo < b.N; lo += size {
		batch := calls[lo:min(lo+size, b.N)]
		if _, err := w.Write(context.Background(), &Batch{Calls: batch, Messages: len(batch)}); err != nil {
			b.Fatal(err)
		}
		if gap > 0 {
			b.StopTimer()
			time.Sleep(gap)
			b.StartTimer()
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	if cpu1, ok := testkit.BackendCPU(pid); ok && cpuOK {
		b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(b.N), "backend-µs/row")
	}
	if rb, err := MeasureRowBytes(context.Background(), db.Admin); err == nil {
		b.ReportMetric(rb.PerRow(rb.Total()), "bytes/row")
	}
}

// oneBackend is a pool of one ingest-role connection, whose backend's CPU
// time (pid) is then the benchmark's; closed at cleanup.
func oneBackend(b *testing.B, db *testkit.DB) (*pgxpool.Pool, int) {
	_, dsn := db.Login(b, "apigee_ingest")
	pool := dsnPool(b, dsn, 1)
	var pid int
	if err := pool.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		b.Fatal(err)
	}
	return pool, pid
}

// undoRawIndexes applies migration 00017's down: the raw table as 00016
// left it.
func undoRawIndexes(tb testing.TB, db *testkit.DB) {
	tb.Helper()
	sqlDB, err := migrations.Open(db.URL, migrations.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	defer sqlDB.Close()
	p, err := migrations.NewProvider(sqlDB)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := p.ApplyVersion(context.Background(), 17, false); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkWriteFixedCost splits what one transaction of the push path
// costs the database before its rows do: each case adds one piece to the
// one before it and reports the backend's CPU per transaction (read from
// /proc, so the server must run on this machine). The difference between
// two cases is that piece's cost; "writer" cases are Writer.Write itself.
// async-commit is a diagnostic only (the share of the commit's WAL flush);
// ingest always commits synchronously. custom-plan and generic-plan are
// diagnostics too, to be compared with each other (their SET LOCAL costs
// a statement): the insert runs on its cached generic plan, and planning
// it afresh for every batch would cost the backend more than the rest
// of the transaction. values-N sends the same INSERT as
// one multi-row VALUES list with a parameter per column and row instead
// of insertSQL's column arrays: the alternative to the arrays for
// single-record deliveries.
//
//	go test -run '^$' -bench BenchmarkWriteFixedCost -benchtime 3000x ./functions/ingest/
func BenchmarkWriteFixedCost(b *testing.B) {
	// noInv is insertSQL without its invalidations CTE, keeping its
	// result; unnestOnly decodes and unnests insertSQL's column arrays and
	// inserts nothing.
	head, _ := sqlPart(b, insertSQL, "", "), inv AS (")
	_, tail := sqlPart(b, insertSQL, "", "SELECT c.stored")
	noInv := head + ")\n" + tail
	unnests, _ := sqlPart(b, insertSQL, "FROM (SELECT unnest(", ") AS t\n")
	unnestOnly := fmt.Sprintf("SELECT count(*) < $%d FROM (SELECT unnest(%s) AS t", len(stageColumns), unnests)
	const batchRow = `INSERT INTO apigee.ingest_batches (batch_id, rows_inserted, rows_duplicate, rows_rejected, messages, rows_sha256)
		VALUES (currval('apigee.ingest_batch_id_seq'), 1, 0, 0, 1, '\x00')`
	cases := []struct {
		name string
		// rows is the calls the transaction inserts with insert (0: none).
		rows   int
		insert string
		// first are the statements after BEGIN; split sends the batch row
		// and COMMIT in a second round trip, as Writer.write does; writer
		// runs Writer.Write instead.
		first         []string
		split, writer bool
		// values sends insert's rows as valuesArgs, not column arrays.
		values bool
	}{
		{name: "begin-commit"},
		{name: "batch-row", first: []string{"SELECT nextval('apigee.ingest_batch_id_seq')", batchRow}},
		{name: "batch-row/async-commit", first: []string{"SET LOCAL synchronous_commit = off", "SELECT nextval('apigee.ingest_batch_id_seq')", batchRow}},
		{name: "unnest-only-1", rows: 1, insert: unnestOnly},
		{name: "insert-1", rows: 1, insert: insertSQL},
		{name: "insert-1/custom-plan", rows: 1, insert: insertSQL, first: []string{"SET LOCAL plan_cache_mode = force_custom_plan"}},
		{name: "insert-1/generic-plan", rows: 1, insert: insertSQL, first: []string{"SET LOCAL plan_cache_mode = force_generic_plan"}},
		{name: "insert-1/two-round-trips", rows: 1, insert: insertSQL, split: true},
		{name: "insert-1/no-invalidations", rows: 1, insert: noInv},
		{name: "insert-1/no-invalidations/no-on-conflict", rows: 1, insert: strings.Replace(noInv, "ON CONFLICT DO NOTHING", "", 1)},
		{name: "insert-1/no-invalidations/plain-table", rows: 1, insert: strings.Replace(noInv, "apigee.api_calls", "apigee.bench_plain_calls", 1)},
		{name: "insert-64", rows: 64, insert: insertSQL},
		{name: "insert-64/two-round-trips", rows: 64, insert: insertSQL, split: true},
		{name: "values-1", rows: 1, insert: valuesSQL(1), values: true},
		{name: "values-64", rows: 64, insert: valuesSQL(64), values: true},
		{name: "writer-1", rows: 1, writer: true},
		{name: "writer-64", rows: 64, writer: true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			db := testkit.New(b, testkit.TimescaleDB)
			if _, err := db.Admin.Exec(ctx, `CREATE TABLE apigee.bench_plain_calls (LIKE apigee.api_calls INCLUDING ALL);
				GRANT SELECT, INSERT ON apigee.bench_plain_calls TO apigee_ingest`); err != nil {
				b.Fatal(err)
			}
			pool, pid := oneBackend(b, db)
			w := NewWriter(pool)
			hour := time.Now().UTC().Truncate(time.Hour)
			calls := make([]Call, b.N*c.rows)
			for i := range calls {
				calls[i] = benchCall("fixed", i, hour.Add(time.Duration(i)*50*time.Microsecond))
			}
			cpu0, ok := testkit.BackendCPU(pid)
			if !ok {
				b.Fatal("no CPU time for the backend: the server must run on this machine")
			}
			b.ResetTimer()
			for i := range b.N {
				batch := calls[i*c.rows : (i+1)*c.rows]
				if c.writer {
					if _, err := w.Write(ctx, &Batch{Calls: batch, Messages: len(batch)}); err != nil {
						b.Fatal(err)
					}
					continue
				}
				args := append(columnArrays(rowValues(0, batch)), len(batch))
				if c.values {
					args = valuesArgs(batch)
				}
				if err := fixedCostTx(ctx, pool, c.first, c.insert, args, len(batch) > 0, batchRow, c.split); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			cpu1, _ := testkit.BackendCPU(pid)
			b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(b.N), "backend-µs/tx")
		})
	}
}

// sqlPart returns the text of q between from (its start when empty) and
// to, and the text from to on; the benchmark fails if either is missing,
// so a change to insertSQL cannot turn a case into something else.
func sqlPart(b *testing.B, q, from, to string) (part, rest string) {
	_, after, ok := strings.Cut(q, from)
	part, _, ok2 := strings.Cut(after, to)
	if !ok || !ok2 {
		b.Fatalf("insertSQL no longer has %q … %q", from, to)
	}
	return part, to + strings.SplitN(after, to, 2)[1]
}

// fixedCostTx is one transaction of BenchmarkWriteFixedCost: BEGIN, first,
// the insert with its args when rows is set (with nextval before it and
// the batch row after), COMMIT, in one round trip or two.
func fixedCostTx(ctx context.Context, pool *pgxpool.Pool, first []string, insert string, args []any, rows bool, batchRow string, split bool) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	send := func(q *pgx.Batch) error { return conn.Conn().SendBatch(ctx, q).Close() }
	q := &pgx.Batch{}
	q.Queue("BEGIN")
	for _, s := range first {
		q.Queue(s)
	}
	if rows {
		q.Queue("SELECT nextval('apigee.ingest_batch_id_seq')")
		q.Queue(insert, args...)
		if split {
			if err := send(q); err != nil {
				return err
			}
			q = &pgx.Batch{}
		}
		q.Queue(batchRow)
	}
	q.Queue("COMMIT")
	return send(q)
}

// valuesSQL is insertSQL for n rows as a VALUES list, one parameter per
// column and row ($1… row by row in stageColumns order without batch_id,
// then the number of rows), for BenchmarkWriteFixedCost's values cases.
func valuesSQL(n int) string {
	rows := make([]string, n)
	p := 1
	for r := range rows {
		sel := make([]string, len(stageColumns))
		for i, t := range stageTypes {
			if i == batchIDColumn {
				sel[i] = currentBatchID
				continue
			}
			sel[i] = fmt.Sprintf("$%d::%s", p, t)
			p++
		}
		rows[r] = "(" + strings.Join(sel, ", ") + ")"
	}
	return `
WITH ins AS (
	INSERT INTO apigee.api_calls (` + columnList + `)
	VALUES ` + strings.Join(rows, ",\n\t") + `
	ON CONFLICT DO NOTHING
	RETURNING message_id, received_at
), inv AS (
	INSERT INTO apigee.rollup_invalidations (batch_id, bucket_start)
	SELECT DISTINCT ` + currentBatchID + `, date_trunc('minute', received_at) FROM ins
)
` + insertedSelect(p)
}

// valuesArgs are valuesSQL's arguments for calls: each row's values but
// batch_id, row by row, then the number of rows.
func valuesArgs(calls []Call) []any {
	var out []any
	for _, row := range rowValues(0, calls) {
		out = append(out, row[:batchIDColumn]...)
		out = append(out, row[batchIDColumn+1:]...)
	}
	return append(out, len(calls))
}
