package ingest

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// RowBytes is what the raw rows of apigee.api_calls take on disk, summed
// over every chunk (TimescaleDB) or daily partition (PostgreSQL).
type RowBytes struct {
	Rows  int64
	Heap  int64 // main fork of the tables
	TOAST int64 // TOAST tables and their indexes
	// Indexes by the name of the index on apigee.api_calls, each summed
	// over its chunk or partition copies, largest first.
	Indexes []IndexBytes
}

// IndexBytes is one index of apigee.api_calls.
type IndexBytes struct {
	Name  string
	Bytes int64
}

// Total is heap, TOAST and every index.
func (r RowBytes) Total() int64 {
	n := r.Heap + r.TOAST
	for _, ix := range r.Indexes {
		n += ix.Bytes
	}
	return n
}

// PerRow divides bytes by the rows stored (0 with no rows).
func (r RowBytes) PerRow(bytes int64) float64 {
	if r.Rows == 0 {
		return 0
	}
	return float64(bytes) / float64(r.Rows)
}

// RowQuerier is a connection, a pool or a transaction.
type RowQuerier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// leavesSQL names apigee.api_calls and its chunks or partitions (both are
// inheritance children of the parent in pg_inherits).
const leavesSQL = `
WITH leaf AS (
	SELECT inhrelid AS oid FROM pg_inherits WHERE inhparent = 'apigee.api_calls'::regclass
	UNION ALL SELECT 'apigee.api_calls'::regclass::oid
)`

// rowBytesSQL sums heap and TOAST; the index query is per storage, since
// TimescaleDB's chunk indexes are not attached to the hypertable's in
// pg_inherits as a partitioned table's are.
const rowBytesSQL = leavesSQL + `
SELECT (SELECT count(*) FROM apigee.api_calls),
	coalesce(sum(pg_relation_size(c.oid)), 0)::bigint,
	coalesce(sum(pg_total_relation_size(nullif(c.reltoastrelid, 0))), 0)::bigint
FROM leaf JOIN pg_class c ON c.oid = leaf.oid`

const indexBytesPartitionedSQL = leavesSQL + `
SELECT coalesce(p.relname, i.relname)::text, sum(pg_relation_size(i.oid))::bigint
FROM leaf
JOIN pg_index x ON x.indrelid = leaf.oid
JOIN pg_class i ON i.oid = x.indexrelid
LEFT JOIN pg_inherits h ON h.inhrelid = i.oid
LEFT JOIN pg_class p ON p.oid = h.inhparent
GROUP BY 1`

const indexBytesTimescaleSQL = leavesSQL + `
SELECT coalesce(ci.hypertable_index_name, i.relname)::text, sum(pg_relation_size(i.oid))::bigint
FROM leaf
JOIN pg_index x ON x.indrelid = leaf.oid
JOIN pg_class i ON i.oid = x.indexrelid
LEFT JOIN _timescaledb_catalog.chunk ch ON format('%I.%I', ch.schema_name, ch.table_name)::regclass = leaf.oid
LEFT JOIN _timescaledb_catalog.chunk_index ci ON ci.chunk_id = ch.id AND ci.index_name = i.relname
GROUP BY 1`

// MeasureRowBytes measures apigee.api_calls as it is now. It reads the
// catalogs and counts every row, so it runs as the owner or a superuser
// (row-level security would hide rows from other roles); make bench and
// TestRowBytes call it after writing rows through the Writer.
func MeasureRowBytes(ctx context.Context, q RowQuerier) (RowBytes, error) {
	var r RowBytes
	var storage string
	if err := q.QueryRow(ctx, "SELECT value FROM apigee.settings WHERE key = 'storage'").Scan(&storage); err != nil {
		return r, fmt.Errorf("row bytes: storage: %w", err)
	}
	if err := q.QueryRow(ctx, rowBytesSQL).Scan(&r.Rows, &r.Heap, &r.TOAST); err != nil {
		return r, fmt.Errorf("row bytes: tables: %w", err)
	}
	sql := indexBytesPartitionedSQL
	if storage == "timescaledb" {
		sql = indexBytesTimescaleSQL
	}
	rows, err := q.Query(ctx, sql)
	if err != nil {
		return r, fmt.Errorf("row bytes: indexes: %w", err)
	}
	var ix IndexBytes
	if _, err := pgx.ForEachRow(rows, []any{&ix.Name, &ix.Bytes}, func() error {
		r.Indexes = append(r.Indexes, ix)
		return nil
	}); err != nil {
		return r, fmt.Errorf("row bytes: indexes: %w", err)
	}
	slices.SortFunc(r.Indexes, func(a, b IndexBytes) int { return cmp.Compare(b.Bytes, a.Bytes) })
	return r, nil
}
