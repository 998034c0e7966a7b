package rollup

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// recompute replaces the rollup rows of the claimed minutes and of their
// hours and returns the raw rows read into minute rows and the rollup
// rows written.
//
// It works on two connections at once. tx, which claimed the minutes,
// deletes the old rows and writes the new ones (stageWriter, stage.go);
// reader reads the raw rows (readHours) under tx's snapshot, exported and
// imported as PostgreSQL's snapshot synchronization functions document
// (the way parallel pg_dump shares one), so it sees exactly the raw rows a
// read on tx would: at least those of every invalidation tx consumed. The
// hours are whole: retention drops raw rows by day (raw_dropped_before is
// a day boundary) and invalidations before it are discarded first, so no
// recomputed hour is missing raw rows.
func recompute(ctx context.Context, tx pgx.Tx, reader *pgx.Conn, minutes, hours []time.Time) (rowsRead, written int64, err error) {
	if err := clearRollups(ctx, tx, minutes, hours); err != nil {
		return 0, 0, err
	}
	if err := prepareStage(ctx, tx); err != nil {
		return 0, 0, err
	}
	var snapshot string
	if err := tx.QueryRow(ctx, "SELECT pg_export_snapshot()").Scan(&snapshot); err != nil {
		return 0, 0, fmt.Errorf("export snapshot: %w", err)
	}
	w := startStageWriter(ctx, tx)
	names := newInterner()
	rowsRead, err = readHours(ctx, reader, snapshot, newStagers(w, names), names, minutes, hours)
	written, werr := w.finish(err == nil)
	if werr != nil {
		// The writer's failure is the cause when the reader failed too
		// (its send returned the writer's error).
		return 0, 0, werr
	}
	if err != nil {
		return 0, 0, err
	}
	return rowsRead, written, nil
}

// readHours reads each hour's raw rows once, a slice of the hour at a time
// (one index range scan each), on conn in a read-only transaction under
// snapshot, aggregates them (aggregate.go) and stages every group.
func readHours(ctx context.Context, conn *pgx.Conn, snapshot string, st stagers, names *interner, minutes, hours []time.Time) (int64, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, fmt.Errorf("begin read: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT "+quoteLiteral(snapshot)); err != nil {
		return 0, fmt.Errorf("import snapshot: %w", err)
	}
	var rowsRead int64
	claimed := claimedByHour(minutes)
	for _, h := range hours {
		a := newHourAgg(names, claimed[h])
		for off := time.Duration(0); off < time.Hour; off += scanSlice {
			from := h.Add(off)
			if err := scanRaw(ctx, tx, a, h, from, from.Add(scanSlice)); err != nil {
				return 0, fmt.Errorf("read raw rows %s: %w", from.Format(time.RFC3339), err)
			}
			calls, err := a.copyMinutes(st, h)
			if err != nil {
				return 0, err
			}
			rowsRead += calls
		}
		if err := a.copyHour(st, h); err != nil {
			return 0, err
		}
	}
	return rowsRead, st.flush()
}

// quoteLiteral quotes s as an SQL string literal (SET TRANSACTION SNAPSHOT
// takes no parameters).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// scanSlice is how much of an hour one raw-row scan reads: the minute
// groups of a slice are written before the next is read, so a busy hour's
// minute groups are never all in memory at once.
const scanSlice = 5 * time.Minute

// clearRollups deletes the rollup rows recompute replaces.
func clearRollups(ctx context.Context, tx pgx.Tx, minutes, hours []time.Time) error {
	for _, r := range rollups {
		for _, rg := range runs(minutes, time.Minute) {
			if _, err := tx.Exec(ctx, "DELETE FROM apigee."+r.minute+" WHERE bucket_start >= $1 AND bucket_start < $2", rg.from, rg.to); err != nil {
				return fmt.Errorf("clear minutes: %w", err)
			}
		}
		for _, rg := range runs(hours, time.Hour) {
			if _, err := tx.Exec(ctx, "DELETE FROM apigee."+r.hour+" WHERE bucket_start >= $1 AND bucket_start < $2", rg.from, rg.to); err != nil {
				return fmt.Errorf("clear hours: %w", err)
			}
		}
	}
	return nil
}

// claimedByHour returns each hour's claimed minutes as minutes past it.
func claimedByHour(minutes []time.Time) map[time.Time][]int {
	out := map[time.Time][]int{}
	for _, m := range minutes {
		h := m.Truncate(time.Hour)
		out[h] = append(out[h], int(m.Sub(h)/time.Minute))
	}
	return out
}

// scanSQL reads the columns the rollups aggregate; the result is asked
// for in binary (scanFormats) and decoded by decodeRaw.
const scanSQL = `SELECT received_at, tenant, organization, environment, apiproxy, api_product, developer_app, request_verb,
	response_status_code, is_error, request_size, response_size, total_response_time, target_response_time
FROM apigee.api_calls WHERE received_at >= $1 AND received_at < $2`

var scanFormats = func() pgx.QueryResultFormats {
	f := make(pgx.QueryResultFormats, strings.Count(scanSQL, ",")+1)
	for i := range f {
		f[i] = pgx.BinaryFormatCode
	}
	return f
}()

// pgEpoch is where PostgreSQL's binary timestamps count microseconds from.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// errRawFormat is a raw row whose binary columns do not have the sizes
// of their types: a schema this code does not know.
var errRawFormat = errors.New("unexpected raw row format")

// scanRaw adds the raw rows of [from, to), all within hour, to a.
func scanRaw(ctx context.Context, tx pgx.Tx, a *hourAgg, hour, from, to time.Time) error {
	rows, err := tx.Query(ctx, scanSQL, scanFormats, from, to)
	if err != nil {
		return err
	}
	defer rows.Close()
	hourUS := hour.Sub(pgEpoch).Microseconds()
	var c rawCall
	var key []byte
	for rows.Next() {
		v := rows.RawValues()
		at, err := decodeRaw(v, &c)
		if err != nil {
			return err
		}
		minute := (at - hourUS) / 60e6
		if minute < 0 || minute >= 60 {
			return fmt.Errorf("%w: received_at outside the hour", errRawFormat)
		}
		key = rowKey(key[:0], v)
		w := a.groupOf(key, func() wideDims { return dimsOf(a.names, v) })
		a.add(w, int32(minute), &c)
	}
	return rows.Err()
}

// rowKey appends the row's dimension columns (1–8 of scanSQL), each
// length-prefixed, NULL as length 0xffffffff: equal keys, equal columns.
func rowKey(key []byte, v [][]byte) []byte {
	for _, b := range v[1:9] {
		if b == nil {
			key = binary.BigEndian.AppendUint32(key, math.MaxUint32)
			continue
		}
		key = binary.BigEndian.AppendUint32(key, uint32(len(b)))
		key = append(key, b...)
	}
	return key
}

// dimsOf interns the row's dimension columns.
func dimsOf(names *interner, v [][]byte) wideDims {
	return wideDims{
		tenant: names.id(v[1]), organization: names.id(v[2]), environment: names.id(v[3]), apiproxy: names.id(v[4]),
		apiProduct: names.id(v[5]), developerApp: names.id(v[6]), requestVerb: names.id(v[7]),
		status: int16(binary.BigEndian.Uint16(v[8])),
	}
}

// decodeRaw checks one binary row of scanSQL and decodes its received_at
// (microseconds since pgEpoch) and the values the aggregates read into c.
func decodeRaw(v [][]byte, c *rawCall) (int64, error) {
	if len(v) != len(scanFormats) || len(v[0]) != 8 || len(v[8]) != 2 {
		return 0, errRawFormat
	}
	c.status = int16(binary.BigEndian.Uint16(v[8]))
	c.isError = len(v[9]) == 1 && v[9][0] != 0
	var ok bool
	if c.requestSize, c.hasRequest, ok = int64Of(v[10]); !ok {
		return 0, errRawFormat
	}
	if c.responseSize, c.hasResponse, ok = int64Of(v[11]); !ok {
		return 0, errRawFormat
	}
	if c.total, c.hasTotal, ok = int32Of(v[12]); !ok {
		return 0, errRawFormat
	}
	if c.target, c.hasTarget, ok = int32Of(v[13]); !ok {
		return 0, errRawFormat
	}
	if c.hasTotal {
		c.totalBin = latencyBin(c.total)
	}
	if c.hasTarget {
		c.targetBin = latencyBin(c.target)
	}
	return int64(binary.BigEndian.Uint64(v[0])), nil
}

// int64Of decodes a nullable binary bigint: value, not NULL, well formed.
func int64Of(b []byte) (int64, bool, bool) {
	switch {
	case b == nil:
		return 0, false, true
	case len(b) == 8:
		return int64(binary.BigEndian.Uint64(b)), true, true
	}
	return 0, false, false
}

// int32Of decodes a nullable binary integer: value, not NULL, well formed.
func int32Of(b []byte) (int32, bool, bool) {
	switch {
	case b == nil:
		return 0, false, true
	case len(b) == 4:
		return int32(binary.BigEndian.Uint32(b)), true, true
	}
	return 0, false, false
}
