package rollup

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/shared/copybinary"
)

// This file is the refresh's write stage: the groups aggregate.go made are
// copied (binary COPY) into one temporary stage table per rollup table and
// inserted from there, by a writer of their own (stageWriter) while the
// reader goes on.

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

// copyMinutes stages the minute groups read so far and forgets them; it
// returns the calls the wide ones count.
func (a *hourAgg) copyMinutes(st stagers, hour time.Time) (calls int64, err error) {
	for i, r := range rollups {
		err := a.levels[i].takeMinutes(&a.claimed, func(k minuteKey, g *group) error {
			if i == 0 {
				calls += g.calls
			}
			return st[r.minute].add(hour.Add(time.Duration(k.minute)*time.Minute), a.levels[i].keys[k.dim], g)
		})
		if err != nil {
			return 0, err
		}
	}
	return calls, nil
}

// copyHour stages the hour's groups.
func (a *hourAgg) copyHour(st stagers, hour time.Time) error {
	for i, r := range rollups {
		lv := a.levels[i]
		for j, d := range lv.keys {
			if err := st[r.hour].add(hour, d, &lv.hour[j]); err != nil {
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

// insertEvery is how many rows a stage table collects before the writer
// moves them on to its rollup table: the insert then overlaps the reading
// of later rows instead of waiting for the end, while a sparse refresh
// still inserts each table once. A variable only so TestSmallCopyChunks
// can insert after every stream.
var insertEvery = 50_000

// stagers is one stager per rollup table, for one recompute.
type stagers map[string]*stager

func newStagers(w *stageWriter, names *interner) stagers {
	st := stagers{}
	for _, t := range staged {
		st[t.table] = &stager{w: w, table: t.table, names: names}
		st[t.table].c.Reset(streamBuffer())
	}
	return st
}

// streamBufs holds sent COPY streams' buffers (*[]byte) for the next
// streams, across refresh batches: a stream grows to copyChunk, and
// growing a new buffer to that size by appending copies it about four
// times over (append grows a large slice by a quarter), which was a fifth
// of the function's CPU in a rebuild of many small batches.
var streamBufs sync.Pool

// streamBuffer returns a sent stream's buffer to reuse, or nil.
func streamBuffer() []byte {
	if b, ok := streamBufs.Get().(*[]byte); ok {
		return *b
	}
	return nil
}

// flush sends what every stager holds.
func (st stagers) flush() error {
	for _, s := range st {
		if err := s.flush(); err != nil {
			return err
		}
	}
	return nil
}

// stager encodes one rollup table's rows into COPY streams of up to about
// copyChunk bytes and hands each full one to the writer.
type stager struct {
	w     *stageWriter
	table string
	names *interner
	c     copybinary.Writer
	rows  int
}

func (st *stager) add(bucket time.Time, d wideDims, g *group) error {
	writeRow(&st.c, st.names, bucket, d, g)
	st.rows++
	if st.c.Len() < copyChunk {
		return nil
	}
	return st.flush()
}

func (st *stager) flush() error {
	if st.rows == 0 {
		return nil
	}
	if err := st.w.send(stageStream{table: st.table, data: st.c.Finish(), rows: st.rows}); err != nil {
		return err
	}
	st.c.Reset(streamBuffer())
	st.rows = 0
	return nil
}

// stageStream is one COPY stream of rows for table's stage table.
type stageStream struct {
	table string
	data  []byte
	rows  int
}

// stageWriter is the write side of a recompute, on the transaction's
// connection and a goroutine of its own: it copies the streams the reader
// sends into the stage tables and inserts a stage table's rows into its
// rollup table once it holds insertEvery rows, and what is left at the
// end. So the database writes one part of the refresh while the reader's
// connection scans the next and this process aggregates it.
type stageWriter struct {
	tx      pgx.Tx
	streams chan stageStream
	done    chan struct{}
	// commit is set before streams is closed: insert what is staged.
	commit bool
	// err, written and staged belong to the writer's goroutine until done
	// is closed.
	err     error
	written int64
	staged  map[string]int // rows in a stage table, not yet inserted
}

func startStageWriter(ctx context.Context, tx pgx.Tx) *stageWriter {
	w := &stageWriter{tx: tx, streams: make(chan stageStream, 2), done: make(chan struct{}), staged: map[string]int{}}
	go w.run(ctx)
	return w
}

// run stops at the first error, closing done, so a reader waiting in send
// is let go at once.
func (w *stageWriter) run(ctx context.Context) {
	defer close(w.done)
	for s := range w.streams {
		if w.err = w.copy(ctx, s); w.err != nil {
			return
		}
	}
	if w.commit {
		// The stage rows go at commit (ON COMMIT DELETE ROWS): no
		// TRUNCATE, which costs a new file and a catalog update each.
		w.err = w.insert(ctx, func(int) bool { return true }, false)
	}
}

func (w *stageWriter) copy(ctx context.Context, s stageStream) error {
	if err := copyStage(ctx, w.tx, s.table, s.data, s.rows); err != nil {
		return err
	}
	buf := s.data[:0]
	streamBufs.Put(&buf)
	w.written += int64(s.rows)
	w.staged[s.table] += s.rows
	return w.insert(ctx, func(n int) bool { return n >= insertEvery }, true)
}

// insert moves the rows of the stage tables whose staged row count due
// accepts into their rollup tables, in one round trip, and empties those
// stage tables if truncate is set.
func (w *stageWriter) insert(ctx context.Context, due func(rows int) bool, truncate bool) error {
	b := &pgx.Batch{}
	for _, s := range staged {
		if n := w.staged[s.table]; n == 0 || !due(n) {
			continue
		}
		b.Queue("INSERT INTO apigee." + s.table + " (" + s.cols + ") SELECT " + s.vals + " FROM pg_temp." + stageTable(s.table))
		if truncate {
			b.Queue("TRUNCATE pg_temp." + stageTable(s.table))
		}
		w.staged[s.table] = 0
	}
	if b.Len() == 0 {
		return nil
	}
	if err := w.tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("insert rollup rows: %w", err)
	}
	return nil
}

// send hands s to the writer; after the writer failed it returns the
// writer's error.
func (w *stageWriter) send(s stageStream) error {
	select {
	case w.streams <- s:
		return nil
	case <-w.done:
		return w.err
	}
}

// finish ends the writer, inserting what is staged when commit is true,
// and returns the rows it staged and its error.
func (w *stageWriter) finish(commit bool) (int64, error) {
	w.commit = commit
	close(w.streams)
	<-w.done
	return w.written, w.err
}

var stageColList = strings.Join(stageCols, ", ")

// copyStage sends the n rows of the COPY stream data to table's stage table.
func copyStage(ctx context.Context, tx pgx.Tx, table string, data []byte, n int) error {
	tag, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(data),
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
func writeRow(c *copybinary.Writer, n *interner, bucket time.Time, d wideDims, g *group) {
	c.Tuple(len(stageCols))
	c.Timestamptz(bucket)
	for _, id := range []uint32{d.tenant, d.organization, d.environment, d.apiproxy, d.apiProduct, d.developerApp, d.requestVerb} {
		n.put(c, id)
	}
	c.Int16(d.status)
	for _, v := range []int64{g.calls, g.errors, g.clientErrors, g.s2xx, g.s3xx, g.s5xx, g.requestBytes, g.responseBytes} {
		c.Int64(v)
	}
	putLatency(c, &g.total)
	putLatency(c, &g.target)
}

// putLatency writes count, sum, min, max (NULL without values), bins and
// counts.
func putLatency(c *copybinary.Writer, l *latency) {
	c.Int64(l.count)
	c.Int64(l.sum)
	if l.count == 0 {
		c.Null()
		c.Null()
	} else {
		c.Int32(l.min)
		c.Int32(l.max)
	}
	n := l.hist.each(func(int32, int64) {})
	c.ArrayHeader(copybinary.OIDInt4, n, n*8)
	l.hist.each(func(b int32, _ int64) { c.Int32(b) })
	c.ArrayHeader(copybinary.OIDInt8, n, n*12)
	l.hist.each(func(_ int32, k int64) { c.Int64(k) })
}
