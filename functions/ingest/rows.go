package ingest

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"apigee-timescale/shared/audit"
	"apigee-timescale/shared/copybinary"
)

// stageColumns are the COPY order, which is the canonical hash's
// (shared/audit owns both, from the record's field table and the message's
// own columns); ingested_at takes its default.
var stageColumns = audit.Columns()

// stageTypes are stageColumns' SQL types.
var stageTypes = audit.SQLTypes()

// createStageSQL declares the staging table column by column (not LIKE
// apigee.api_calls) because the ingest role may not read the raw table's
// definition-bearing columns. The batch's last round trip empties it with
// DELETE (clearStageSQL): ON COMMIT DELETE ROWS would truncate it at every
// commit instead, which rebuilds its TOAST table and that table's index:
// the largest fixed cost of a small batch. The dead rows
// DELETE leaves are reclaimed by a VACUUM every few thousand rows
// (Writer.tidy).
var createStageSQL = func() string {
	var cols []string
	for i, t := range audit.SQLTypes() {
		cols = append(cols, stageColumns[i]+" "+t)
	}
	return "CREATE TEMP TABLE IF NOT EXISTS apigee_stage_calls (\n\t" + strings.Join(cols, ", ") + "\n) ON COMMIT PRESERVE ROWS"
}()

// moveSQL inserts the staged rows that are new, records the minutes they
// touched for functions/rollup, and says which were stored (insertedSelect;
// $2 is the number of staged rows). Duplicates within the batch or already
// stored are skipped by ON CONFLICT DO NOTHING (on
// api_calls_key, migration 00017). Rows go in one total order of their
// keys so that two batches holding the same redelivered messages wait on
// each other in one order and cannot deadlock; received_at first, the
// index's order, so a batch appends to api_calls_key's pages instead of
// splitting them (the index stays ~90 % full) and the heap is in time
// order for the rollup's range scans.
var moveSQL = `
WITH ins AS (
	INSERT INTO apigee.api_calls (` + columnList + `)
	SELECT ` + columnList + ` FROM apigee_stage_calls
	ORDER BY received_at, message_id
	ON CONFLICT DO NOTHING
	RETURNING message_id, received_at
), inv AS (
	INSERT INTO apigee.rollup_invalidations (batch_id, bucket_start)
	SELECT DISTINCT $1::bigint, date_trunc('minute', received_at) FROM ins
)
` + insertedSelect(2)

// insertedSelect ends moveSQL and insertSQL: when all of the batch's $n
// calls were stored, as they are unless a message was redelivered, one row
// (n, NULL, NULL), so no key is sent or read; otherwise one row per stored
// call with its key (and a count of 0 with NULLs when none was).
func insertedSelect(n int) string {
	return fmt.Sprintf(`SELECT c.stored, i.message_id, i.received_at
FROM (SELECT count(*) AS stored FROM ins) AS c LEFT JOIN ins AS i ON c.stored < $%d`, n)
}

const clearStageSQL = "DELETE FROM apigee_stage_calls"

// copyStageSQL takes copyRows' stream.
var copyStageSQL = "COPY apigee_stage_calls (" + columnList + ") FROM STDIN (FORMAT binary)"

var columnList = strings.Join(stageColumns, ", ")

// insertRejectsSQL takes one array per column ($1–$13) and the batch id ($14).
const insertRejectsSQL = `
INSERT INTO apigee.ingest_rejects (received_at, dedupe_key, tenant, reason, field, detail, record_index,
	payload, payload_sha256, pubsub_message_id, subscription, publish_time, attributes, batch_id)
SELECT r.*, $14::bigint FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
	$7::integer[], $8::bytea[], $9::bytea[], $10::text[], $11::text[], $12::timestamptz[], $13::jsonb[]) AS r
ON CONFLICT DO NOTHING`

// callRows yields calls' rows (RowValues) one at a time, for HashCalls.
type callRows struct {
	calls   []Call
	batchID int64
	i       int
	row     []any
}

func (c *callRows) Next() bool {
	c.i++
	return c.i <= len(c.calls)
}

func (c *callRows) Err() error { return nil }

func (c *callRows) Values() ([]any, error) {
	r := &c.calls[c.i-1]
	c.row = audit.RowValues(c.row, r.Record, &r.PubSubMessageID, &r.PublishTime, c.batchID)
	return c.row, nil
}

// rejectColumns turns rejects into the 13 column arrays of insertRejectsSQL.
func rejectColumns(rs []Reject) []any {
	n := len(rs)
	var (
		at      = make([]time.Time, n)
		key     = make([]string, n)
		tenant  = make([]string, n)
		reason  = make([]string, n)
		field   = make([]*string, n)
		detail  = make([]string, n)
		index   = make([]int32, n)
		payload = make([][]byte, n)
		sum     = make([][]byte, n)
		msgID   = make([]*string, n)
		sub     = make([]*string, n)
		pub     = make([]*time.Time, n)
		attrs   = make([][]byte, n)
	)
	for i := range rs {
		r := &rs[i]
		at[i] = r.ReceivedAt
		key[i] = r.DedupeKey
		tenant[i] = r.Tenant
		reason[i] = r.Reason
		field[i] = nullString(r.Field)
		detail[i] = r.Detail
		index[i] = int32(r.RecordIndex)
		payload[i] = r.Payload
		if payload[i] == nil {
			payload[i] = []byte{}
		}
		h := sha256Sum(r.Payload)
		sum[i] = h[:]
		msgID[i] = nullString(r.PubSubMessageID)
		sub[i] = nullString(r.Subscription)
		pub[i] = nullTime(r.PublishTime)
		attrs[i] = jsonAttributes(r.Attributes)
	}
	return []any{at, key, tenant, reason, field, detail, index, payload, sum, msgID, sub, pub, attrs}
}

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func jsonAttributes(m map[string]string) []byte {
	if len(m) == 0 {
		return nil
	}
	b, _ := json.Marshal(m) // a map of strings always marshals
	return b
}

// insertSQL is moveSQL for a batch sent as one array per column instead of
// through the staging table: the same INSERT … ON CONFLICT DO NOTHING and
// the same invalidations, in one statement sent with the batch's BEGIN.
// The batch id is currentBatchID. $1… are the
// columns' arrays, in stageColumns order without batch_id, then the number
// of calls (for insertedSelect). The arrays are in key order (keyOrder): a
// function scan returns its rows in the order of its arrays, so the INSERT
// goes in that order without sorting again. An array sent as
// NULL, for a column no row of the batch has, is a column of NULLs: ROWS
// FROM pads a shorter function's result with NULLs, and the per-row cost of
// unnesting it is saved. Arrays carry inet, text[] and jsonb as text, cast
// here (a text[] per row cannot be one element of a text[] array, and the
// text is what pgx's binary jsonb sends anyway).
var insertSQL = "\nWITH " + insertCTEs(currentBatchID, skipStored) + insertedSelect(callsParam)

// callsParam is the number of insertSQL's parameter that holds the number
// of calls, after one array per column but batch_id.
var callsParam = len(stageColumns)

// insertCTEs is insertSQL's CTEs, ins and inv, with batchID the SQL
// expression of the batch id and onConflict ins's conflict clause
// (skipStored, or none). The column arrays are unnested in the select
// list, where the unnests run in lockstep one row at a time (ProjectSet),
// not as unnest(a, b, …) in FROM: a function scan first copies every row
// into a tuplestore, and that copy was an eighth of the backend's CPU per
// row (BenchmarkWriteFixedCost writer-64: 8.1 → 7.1 µs a row beyond the
// first).
func insertCTEs(batchID, onConflict string) string {
	var unnests, sel []string
	n := 1
	for i, t := range stageTypes {
		c := stageColumns[i]
		if c == "batch_id" {
			sel = append(sel, batchID)
			continue
		}
		name := "c_" + c
		param := t
		if arrayAsText(t) {
			param = "text"
		}
		unnests = append(unnests, fmt.Sprintf("unnest($%d::%s[]) AS %s", n, param, name))
		if param != t {
			sel = append(sel, name+"::"+t)
		} else {
			sel = append(sel, name)
		}
		n++
	}
	return `ins AS (
	INSERT INTO apigee.api_calls (` + columnList + `)
	SELECT ` + strings.Join(sel, ", ") + `
	FROM (SELECT ` + strings.Join(unnests, ", ") + `) AS t` + onConflict + `
	RETURNING message_id, received_at
), inv AS (
	INSERT INTO apigee.rollup_invalidations (batch_id, bucket_start)
	SELECT DISTINCT ` + batchID + `, date_trunc('minute', received_at) FROM ins
)
`
}

// skipStored is insertSQL's conflict clause: a call stored already is
// left as it is, and counted a duplicate.
const skipStored = "\n\tON CONFLICT DO NOTHING"

// currentBatchID is the batch id nextval gave this transaction just
// before (currval, in an InitPlan: evaluated once).
const currentBatchID = "(SELECT currval('apigee.ingest_batch_id_seq'))"

// oneTripSQL is a whole batch in one statement, and so in one
// transaction of its own without BEGIN or COMMIT: its batch id (id),
// insertSQL's rows and invalidations, and the batch row in format 2
// (migration 00027), the database binding the id to the rows' digest. It
// expects every call to be new, so its INSERT has no ON CONFLICT: a call
// stored already fails the statement with a unique violation, which rolls
// it all back, and the batch is written again in two round trips (as
// expect_all_stored's notAllNew would, should a row go missing some other
// way). Without the conflict clause the INSERT neither probes the key's
// index before each row nor takes a speculative-insertion lock for it;
// the unique check of the index insert is what finds a duplicate. After
// insertSQL's parameters: the batch's duplicates within itself, its
// messages, its rows' min and max received_at, and their digest
// (audit.NewDigest). It answers the batch id and the rows inserted (the
// batch row is the ingest role's to insert, not to read back). nextval
// runs inside the statement's transaction, as the seal horizon needs
// (functions/rollup/seal.go).
var oneTripSQL = "\nWITH id AS MATERIALIZED (SELECT nextval('apigee.ingest_batch_id_seq') AS v), " +
	insertCTEs("(SELECT v FROM id)", "") + fmt.Sprintf(`, bat AS (
	INSERT INTO apigee.ingest_batches (batch_id, rows_inserted, rows_duplicate, rows_rejected, messages,
		min_received_at, max_received_at, rows_sha256, rows_sha256_format)
	SELECT id.v, apigee.expect_all_stored(c.stored, $%[1]d::bigint), $%[2]d::integer, 0, $%[3]d::integer,
		$%[4]d::timestamptz, $%[5]d::timestamptz, sha256(int8send(id.v) || $%[6]d::bytea), %[7]d
	FROM (SELECT count(*) AS stored FROM ins) AS c, id
)
SELECT (SELECT v FROM id), (SELECT count(*) FROM ins)`, callsParam, callsParam+1, callsParam+2, callsParam+3, callsParam+4, callsParam+5, audit.RowsFormat2)

// notAllNew is the SQLSTATE of expect_all_stored (migration 00027): a
// one-round-trip batch stored fewer calls than it sent.
const notAllNew = "AT001"

// arrayAsText: the column types whose arrays insertSQL takes as text.
func arrayAsText(sqlType string) bool {
	return sqlType == "inet" || sqlType == "jsonb" || strings.HasSuffix(sqlType, "[]")
}

// columnArrays returns insertSQL's arguments for rows (RowValues): one
// array per column but batch_id, each holding what COPY would have written,
// or nil (NULL) for a column that is NULL in every row.
func columnArrays(vals [][]any) []any {
	cols := make([]any, 0, len(stageTypes))
	for j, t := range stageTypes {
		if j == batchIDColumn {
			continue
		}
		if allNull(vals, j) {
			cols = append(cols, nil)
			continue
		}
		cols = append(cols, columnArray(t, vals, j))
	}
	return cols
}

// arrayParams adds insertSQL's column arrays to p in binary format: what
// columnArrays holds, as PostgreSQL's array_send writes it (a column
// insertSQL takes as text, arrayAsText, as text elements), each element
// encoded by copyValue as the staging COPY encodes it. pgx's encoding of
// columnArrays boxed every value and found an encode plan for it: about 7
// % of the push path's function CPU (bench-ingest -only 3a -cpuprofile).
func arrayParams(p *copybinary.Params, vals [][]any) error {
	var bad error
	for j, k := range stageKinds {
		if j == batchIDColumn {
			continue
		}
		if allNull(vals, j) {
			p.Null()
			continue
		}
		asText := arrayAsText(stageTypes[j])
		oid := uint32(copybinary.OIDText)
		if !asText {
			oid = arrayElemOIDs[k]
		}
		p.Array(oid, len(vals), func(w *copybinary.Writer) {
			for i := range vals {
				v := vals[i][j]
				if asText {
					if s := textValue(v); s != nil {
						w.Text(*s)
					} else {
						w.Null()
					}
					continue
				}
				if !copyValue(w, k, v) && bad == nil {
					bad = fmt.Errorf("write: column %s: no %s encoding for %T", stageColumns[j], stageTypes[j], v)
				}
			}
		})
	}
	return bad
}

// arrayElemOIDs are the element types of the arrays arrayParams writes
// for columns not taken as text.
var arrayElemOIDs = map[copyKind]uint32{
	copyText: copybinary.OIDText, copyTimestamptz: copybinary.OIDTimestamptz, copySmallint: copybinary.OIDInt2,
	copyInteger: copybinary.OIDInt4, copyBigint: copybinary.OIDInt8, copyBoolean: copybinary.OIDBool,
}

// allNull reports whether column j is NULL in every row.
func allNull(vals [][]any, j int) bool {
	for i := range vals {
		if !isNull(vals[i][j]) {
			return false
		}
	}
	return true
}

// isNull reports a value RowValues writes for NULL: nil, or a nil pointer
// or slice.
func isNull(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case *string:
		return x == nil
	case *int16:
		return x == nil
	case *int32:
		return x == nil
	case *int64:
		return x == nil
	case *bool:
		return x == nil
	case *time.Time:
		return x == nil
	case []byte:
		return x == nil
	case []string:
		return x == nil
	}
	return false
}

// columnArray is column j of vals as a typed slice pgx encodes as an array
// of sqlType (or of text, see arrayAsText).
func columnArray(sqlType string, vals [][]any, j int) any {
	switch sqlType {
	case "timestamptz":
		out := make([]*time.Time, len(vals))
		for i := range vals {
			switch x := vals[i][j].(type) {
			case time.Time:
				out[i] = &x
			case *time.Time:
				out[i] = x
			}
		}
		return out
	case "integer":
		return typedColumn[int32](vals, j)
	case "smallint":
		return typedColumn[int16](vals, j)
	case "bigint":
		return typedColumn[int64](vals, j)
	case "boolean":
		return typedColumn[bool](vals, j)
	}
	out := make([]*string, len(vals))
	for i := range vals {
		out[i] = textValue(vals[i][j])
	}
	return out
}

// typedColumn collects values that are T or *T (nil for NULL).
func typedColumn[T any](vals [][]any, j int) []*T {
	out := make([]*T, len(vals))
	for i := range vals {
		switch x := vals[i][j].(type) {
		case T:
			out[i] = &x
		case *T:
			out[i] = x
		}
	}
	return out
}

// textValue is a column value as the text PostgreSQL's input function of
// its type reads (nil for NULL).
func textValue(v any) *string {
	var s string
	switch x := v.(type) {
	case nil:
		return nil
	case string:
		s = x
	case *string:
		return x
	case netip.Addr:
		s = x.String()
	case []byte: // jsonb
		if x == nil {
			return nil
		}
		s = string(x)
	case []string:
		if x == nil {
			return nil
		}
		s = arrayLiteral(x)
	default:
		panic(fmt.Sprintf("ingest: no text form for %T", v))
	}
	return &s
}

// arrayLiteral writes a text[] in PostgreSQL's array input syntax, every
// element double-quoted with " and \ escaped, so no content is special.
func arrayLiteral(elems []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, e := range elems {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for k := 0; k < len(e); k++ {
			if e[k] == '"' || e[k] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(e[k])
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// copyKind is how copyValue writes a column of one SQL type.
type copyKind uint8

const (
	copyText copyKind = iota
	copyTimestamptz
	copySmallint
	copyInteger
	copyBigint
	copyBoolean
	copyInet
	copyJSONB
	copyTextArray
)

// stageKinds are stageTypes as copyKinds. A column type without one is a
// programming error that every test of this package meets at start-up.
var stageKinds = func() []copyKind {
	kinds := map[string]copyKind{"text": copyText, "timestamptz": copyTimestamptz, "smallint": copySmallint,
		"integer": copyInteger, "bigint": copyBigint, "boolean": copyBoolean, "inet": copyInet, "jsonb": copyJSONB,
		"text[]": copyTextArray}
	out := make([]copyKind, len(stageTypes))
	for j, t := range stageTypes {
		k, ok := kinds[t]
		if !ok {
			panic("ingest: no binary COPY encoding for column type " + t + " of " + stageColumns[j])
		}
		out[j] = k
	}
	return out
}()

// copyRows appends rows (RowValues, in stageColumns order) to a binary
// COPY stream for copyStageSQL.
func copyRows(w *copybinary.Writer, vals [][]any) error {
	for _, row := range vals {
		w.Tuple(len(row))
		for j, v := range row {
			if !copyValue(w, stageKinds[j], v) {
				return fmt.Errorf("write: copy: column %s: no %s encoding for %T", stageColumns[j], stageTypes[j], v)
			}
		}
	}
	return nil
}

// copyValue writes v, a value RowValues gives for a column of kind k, in
// that type's binary format; false when v is not such a value.
func copyValue(w *copybinary.Writer, k copyKind, v any) bool {
	if isNull(v) {
		w.Null()
		return true
	}
	switch k {
	case copyText:
		return put(w.Text, v)
	case copyTimestamptz:
		return put(w.Timestamptz, v)
	case copySmallint:
		return put(w.Int16, v)
	case copyInteger:
		return put(w.Int32, v)
	case copyBigint:
		return put(w.Int64, v)
	case copyBoolean:
		return put(w.Bool, v)
	case copyInet:
		a, ok := v.(netip.Addr)
		if ok && a.IsValid() && a.Zone() == "" {
			w.Inet(a)
			return true
		}
	case copyJSONB:
		return put(w.JSONB, v)
	case copyTextArray:
		return put(w.TextArray, v)
	}
	return false
}

// put writes v with write when v is a T or a (non-nil) *T.
func put[T any](write func(T), v any) bool {
	switch x := v.(type) {
	case T:
		write(x)
	case *T:
		write(*x)
	default:
		return false
	}
	return true
}
