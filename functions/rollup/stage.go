package rollup

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// This file is the refresh's write stage: the groups aggregate.go made are
// copied (binary COPY) into one temporary stage table per rollup table and
// inserted from there with one statement each.

// stageCols is every stage table's shape: the wide dimensions (NULL in a
// per-proxy row's product, app, verb and status), every counter and each
// latency histogram as its two arrays.
var stageCols = []string{"bucket_start", "tenant", "organization", "environment", "apiproxy", "api_product",
	"developer_app", "request_verb", "response_status_code",
	"calls", "errors", "client_errors", "s2xx", "s3xx", "s5xx", "request_bytes", "response_bytes",
	"total_ms_count", "total_ms_sum", "total_ms_min", "total_ms_max", "total_bins", "total_counts",
	"target_ms_count", "target_ms_sum", "target_ms_min", "target_ms_max", "target_bins", "target_counts"}

const stageTypes = `bucket_start timestamptz, tenant text, organization text, environment text, apiproxy text,
	api_product text, developer_app text, request_verb text, response_status_code smallint,
	calls bigint, errors bigint, client_errors bigint, s2xx bigint, s3xx bigint, s5xx bigint,
	request_bytes bigint, response_bytes bigint,
	total_ms_count bigint, total_ms_sum bigint, total_ms_min integer, total_ms_max integer, total_bins integer[], total_counts bigint[],
	target_ms_count bigint, target_ms_sum bigint, target_ms_min integer, target_ms_max integer, target_bins integer[], target_counts bigint[]`

const (
	latencyVals = `total_ms_count, total_ms_sum, total_ms_min, total_ms_max, ROW(total_bins, total_counts)::apigee.latency_hist,
	target_ms_count, target_ms_sum, target_ms_min, target_ms_max, ROW(target_bins, target_counts)::apigee.latency_hist`
	wideVals  = `bucket_start, ` + dims + `, calls, errors, client_errors, request_bytes, response_bytes, ` + latencyVals
	proxyVals = `bucket_start, ` + proxyDims + `, calls, errors, s2xx, s3xx, client_errors, s5xx, request_bytes, response_bytes, ` + latencyVals
	appVals   = `bucket_start, ` + appDims + `, calls, errors, s2xx, s3xx, client_errors, s5xx, request_bytes, response_bytes, ` + latencyVals
)

const dims = `tenant, organization, environment, apiproxy, api_product, developer_app, request_verb, response_status_code`

// proxyDims are the dimensions of the narrow dashboard rollups
// (proxy_calls_1m/1h, migration 00019).
const proxyDims = `tenant, organization, environment, apiproxy`

const proxyCols = `bucket_start, ` + proxyDims + `,
	calls, errors, status_2xx, status_3xx, status_4xx, status_5xx, request_bytes, response_bytes,
	total_ms_count, total_ms_sum, total_ms_min, total_ms_max, total_ms_hist,
	target_ms_count, target_ms_sum, target_ms_min, target_ms_max, target_ms_hist`

// appDims are the dimensions of the per-app rollups (app_calls_1m/1h,
// migration 00024).
const appDims = `tenant, organization, environment, developer_app`

const appCols = `bucket_start, ` + appDims + `,
	calls, errors, status_2xx, status_3xx, status_4xx, status_5xx, request_bytes, response_bytes,
	total_ms_count, total_ms_sum, total_ms_min, total_ms_max, total_ms_hist,
	target_ms_count, target_ms_sum, target_ms_min, target_ms_max, target_ms_hist`

const rollupCols = `bucket_start, ` + dims + `,
	calls, errors, client_errors, request_bytes, response_bytes,
	total_ms_count, total_ms_sum, total_ms_min, total_ms_max, total_ms_hist,
	target_ms_count, target_ms_sum, target_ms_min, target_ms_max, target_ms_hist`

// rollupTables is one rollup's minute and hour tables, the columns its rows
// fill from a stage row, and how its dimensions derive from the wide ones.
type rollupTables struct {
	minute, hour string
	cols, vals   string
	project      func(wideDims) wideDims
}

// rollups is every rollup the refresh writes; the first is the wide one.
var rollups = []rollupTables{
	{"api_calls_1m", "api_calls_1h", rollupCols, wideVals, nil},
	{"proxy_calls_1m", "proxy_calls_1h", proxyCols, proxyVals, wideDims.proxyOf},
	{"app_calls_1m", "app_calls_1h", appCols, appVals, wideDims.appOf},
}

// staged is each rollup table with the columns its stage rows fill.
var staged = func() []struct{ table, cols, vals string } {
	var out []struct{ table, cols, vals string }
	for _, r := range rollups {
		out = append(out, struct{ table, cols, vals string }{r.minute, r.cols, r.vals},
			struct{ table, cols, vals string }{r.hour, r.cols, r.vals})
	}
	return out
}()

func stageTable(table string) string { return "rollup_stage_" + table }

// prepareStage makes the session's stage tables if this session has not
// (a pooled connection keeps them); their rows go at commit (ON COMMIT
// DELETE ROWS), so a failed batch leaves none.
func prepareStage(ctx context.Context, tx pgx.Tx) error {
	b := &pgx.Batch{}
	for _, s := range staged {
		b.Queue("CREATE TEMP TABLE IF NOT EXISTS " + stageTable(s.table) + " (" + stageTypes + ") ON COMMIT DELETE ROWS")
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("stage tables: %w", err)
	}
	return nil
}

// insertStaged moves the stage rows into the rollup tables that got any.
func insertStaged(ctx context.Context, tx pgx.Tx, st stagers) error {
	b := &pgx.Batch{}
	for _, s := range staged {
		if st[s.table].written == 0 {
			continue
		}
		b.Queue("INSERT INTO apigee." + s.table + " (" + s.cols + ") SELECT " + s.vals + " FROM pg_temp." + stageTable(s.table))
	}
	if b.Len() == 0 {
		return nil
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("insert rollup rows: %w", err)
	}
	return nil
}

// copyMinutes stages the minute groups read so far and forgets them; it
// returns the calls the wide ones count.
func (a *hourAgg) copyMinutes(ctx context.Context, st stagers, hour time.Time) (calls int64, err error) {
	for i, r := range rollups {
		err := a.levels[i].takeMinutes(func(k minuteKey, g *group) error {
			if i == 0 {
				calls += g.calls
			}
			return st[r.minute].add(ctx, hour.Add(time.Duration(k.minute)*time.Minute), a.levels[i].keys[k.dim], g)
		})
		if err != nil {
			return 0, err
		}
	}
	return calls, nil
}

// copyHour stages the hour's groups.
func (a *hourAgg) copyHour(ctx context.Context, st stagers, hour time.Time) error {
	for i, r := range rollups {
		lv := a.levels[i]
		for j, d := range lv.keys {
			if err := st[r.hour].add(ctx, hour, d, &lv.hour[j]); err != nil {
				return err
			}
		}
	}
	return nil
}

// copyChunk is the most a COPY stream holds before it is sent: the
// function's memory does not grow with a busy slice's rows, and a sparse
// refresh (hours of a few rows) sends one stream per table, not one per
// slice. A variable only so TestSmallCopyChunks can make every stream a
// few rows.
var copyChunk = 4 << 20

// stagers is one stager per rollup table, for one recompute.
type stagers map[string]*stager

func newStagers(tx pgx.Tx, names *interner) stagers {
	st := stagers{}
	for _, t := range staged {
		st[t.table] = &stager{tx: tx, table: t.table, names: names}
		st[t.table].c.reset()
	}
	return st
}

// flush sends what every stager holds and returns the rows staged in all.
func (st stagers) flush(ctx context.Context) (int64, error) {
	var written int64
	for _, s := range st {
		if err := s.flush(ctx); err != nil {
			return 0, err
		}
		written += s.written
	}
	return written, nil
}

// stager sends one rollup table's rows to its stage table in COPY streams
// of up to about copyChunk bytes.
type stager struct {
	tx      pgx.Tx
	table   string
	names   *interner
	c       copyBinary
	rows    int
	written int64
}

func (st *stager) add(ctx context.Context, bucket time.Time, d wideDims, g *group) error {
	writeRow(&st.c, st.names, bucket, d, g)
	st.rows++
	if len(st.c.b) < copyChunk {
		return nil
	}
	return st.flush(ctx)
}

func (st *stager) flush(ctx context.Context) error {
	if err := copyStage(ctx, st.tx, st.table, &st.c, st.rows); err != nil {
		return err
	}
	st.written += int64(st.rows)
	st.rows = 0
	st.c.reset()
	return nil
}

var stageColList = strings.Join(stageCols, ", ")

// copyStage sends the n rows in c to table's stage table.
func copyStage(ctx context.Context, tx pgx.Tx, table string, c *copyBinary, n int) error {
	if n == 0 {
		return nil
	}
	tag, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(c.finish()),
		"COPY pg_temp."+stageTable(table)+" ("+stageColList+") FROM STDIN (FORMAT binary)")
	if err != nil {
		return fmt.Errorf("stage %s: %w", table, err)
	}
	if tag.RowsAffected() != int64(n) {
		return fmt.Errorf("stage %s: copied %d rows, want %d", table, tag.RowsAffected(), n)
	}
	return nil
}

// writeRow writes one stage row, in stageCols order. A narrow rollup's group
// has zero for the dimensions it lacks: NULL, and a status its tables do
// not read.
func writeRow(c *copyBinary, n *interner, bucket time.Time, d wideDims, g *group) {
	c.tuple(len(stageCols))
	c.timestamptz(bucket)
	for _, id := range []uint32{d.tenant, d.organization, d.environment, d.apiproxy, d.apiProduct, d.developerApp, d.requestVerb} {
		n.put(c, id)
	}
	c.int16(d.status)
	for _, v := range []int64{g.calls, g.errors, g.clientErrors, g.s2xx, g.s3xx, g.s5xx, g.requestBytes, g.responseBytes} {
		c.int64(v)
	}
	putLatency(c, &g.total)
	putLatency(c, &g.target)
}

// putLatency writes count, sum, min, max (NULL without values), bins and
// counts.
func putLatency(c *copyBinary, l *latency) {
	c.int64(l.count)
	c.int64(l.sum)
	if l.count == 0 {
		c.null()
		c.null()
	} else {
		c.int32(l.min)
		c.int32(l.max)
	}
	n := l.hist.each(func(int32, int64) {})
	c.arrayHeader(oidInt4, n, 4)
	l.hist.each(func(b int32, _ int64) { c.int32(b) })
	c.arrayHeader(oidInt8, n, 8)
	l.hist.each(func(_ int32, k int64) { c.int64(k) })
}
