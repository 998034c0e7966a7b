package ingest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/testkit"
)

var oldInsertSQL = func() string {
	var params, names, sel []string
	n := 2
	for i, t := range stageTypes {
		c := stageColumns[i]
		if c == "batch_id" {
			sel = append(sel, "$1::bigint")
			continue
		}
		name := "c_" + c
		param := t
		if arrayAsText(t) {
			param = "text"
		}
		params = append(params, fmt.Sprintf("$%d::%s[]", n, param))
		names = append(names, name)
		if param != t {
			sel = append(sel, name+"::"+t)
		} else {
			sel = append(sel, name)
		}
		n++
	}
	return `
WITH ins AS (
	INSERT INTO apigee.api_calls (` + columnList + `)
	SELECT ` + strings.Join(sel, ", ") + `
	FROM unnest(` + strings.Join(params, ", ") + `) AS t(` + strings.Join(names, ", ") + `)
	ORDER BY c_received_at, c_message_id
	ON CONFLICT DO NOTHING
	RETURNING message_id, received_at
), inv AS (
	INSERT INTO apigee.rollup_invalidations (batch_id, bucket_start)
	SELECT DISTINCT $1::bigint, date_trunc('minute', received_at) FROM ins
)
SELECT message_id, received_at FROM ins`
}()

func oldArrays(vals [][]any, id int64) []any {
	cols := []any{id}
	for j, t := range stageTypes {
		if j != batchIDColumn {
			cols = append(cols, columnArray(t, vals, j))
		}
	}
	return cols
}

func schedCPU(pid int) time.Duration {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
	var ns int64
	fmt.Sscan(string(b), &ns)
	return time.Duration(ns)
}

func TestAB(t *testing.T) {
	abRows, abReps := 60, 40
	if os.Getenv("AB_REPS") != "" {
		fmt.Sscan(os.Getenv("AB_REPS"), &abReps)
	}
	if os.Getenv("AB_ROWS") != "" {
		fmt.Sscan(os.Getenv("AB_ROWS"), &abRows)
	}
	db := testkit.New(t, testkit.TimescaleDB)
	_, dsn := db.Login(t, "apigee_ingest")
	cfg, _ := pgxpool.ParseConfig(dsn)
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx := context.Background()
	var pid int
	if err := pool.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	w := NewWriter(pool)
	now := time.Now().UTC()
	seq := 0
	mk := func(n int) []Call {
		calls := make([]Call, n)
		for i := range calls {
			seq++
			c := benchCall("ab", seq, now.Add(-time.Duration(seq*7919%(4*3600))*time.Second))
			ua := "okhttp/4.12.0"
			c.UserAgent = ua
			c.PubSubMessageID = fmt.Sprint("ps-", seq)
			c.PublishTime = now
			calls[i] = c
		}
		return calls
	}
	oldWrite := func(n int) {
		calls := mk(n)
		pc, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Release()
		pool := pc.Conn()
		var id int64
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		b.Queue("SELECT nextval('apigee.ingest_batch_id_seq')").QueryRow(func(r pgx.Row) error { return r.Scan(&id) })
		if err := pool.SendBatch(ctx, b).Close(); err != nil {
			t.Fatal(err)
		}
		calls, index := firstOfEachKey(calls)
		vals := rowValues(id, calls)
		rows, err := pool.Query(ctx, oldInsertSQL, oldArrays(vals, id)...)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := collectInserted(rows, len(calls), index); err != nil {
			t.Fatal(err)
		}
		b = &pgx.Batch{}
		b.Queue(`INSERT INTO apigee.ingest_batches (batch_id, rows_inserted, rows_duplicate, rows_rejected, messages, rows_sha256) VALUES ($1, 1, 0, 0, 1, '\x00')`, id)
		b.Queue("COMMIT")
		if err := pool.SendBatch(ctx, b).Close(); err != nil {
			t.Fatal(err)
		}
	}
	newWrite := func(n int) {
		if _, err := w.Write(ctx, &Batch{Calls: mk(n), Messages: n}); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Println("pid", pid, schedCPU(pid))
	newWrite(10)
	oldWrite(10)
	var sum [2]time.Duration
	var rowsN [2]int
	for rep := 0; rep < abReps; rep++ {
		for k, f := range []func(int){oldWrite, newWrite} {
			if os.Getenv("AB_NEWONLY") != "" && k == 0 {
				continue
			}
			c0 := schedCPU(pid)
			for i := 0; i < 20; i++ {
				f(abRows)
			}
			sum[k] += schedCPU(pid) - c0
			rowsN[k] += 20 * abRows
		}
	}
	fmt.Println(sum, rowsN, schedCPU(pid))
	fmt.Printf("old %.1f µs/row   new %.1f µs/row\n", float64(sum[0].Microseconds())/float64(rowsN[0]), float64(sum[1].Microseconds())/float64(rowsN[1]))
}
