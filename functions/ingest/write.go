// The write stage writes ingest batches into the raw tables, exactly once per
// API call: rows are copied into a per-connection temporary staging table
// and moved into apigee.api_calls with INSERT … ON CONFLICT DO NOTHING (a
// small batch is sent as column arrays straight to that INSERT instead), so
// a redelivered message never makes a second row. In the same transaction it
// quarantines rejects, records the minutes the batch touched (for
// functions/rollup) and one apigee.ingest_batches row with counts and a
// SHA-256 of the inserted rows. A small batch of new calls without rejects,
// what single-record push deliveries make, takes one round trip to the
// database (writeOneTrip), in an INSERT without ON CONFLICT whose unique
// violation, should a call be stored already, sends the batch the other
// way; the others take two.
//
// COPY goes into the staging table rather than the hypertable because COPY
// cannot skip conflicts, and because PostgreSQL refuses COPY FROM for roles
// that row-level security applies to (the ingest role is one).

package ingest

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/shared/audit"
	"apigee-timescale/shared/copybinary"
	"apigee-timescale/shared/record"
)

// Conns hands out pooled connections. *pgxpool.Pool satisfies it, and so
// does the credential-refreshing pool of shared/dbconn.
type Conns interface {
	Acquire(ctx context.Context) (*pgxpool.Conn, error)
}

// Call is one validated API call record with the Pub/Sub metadata of the
// message that carried it.
type Call struct {
	*record.Record
	PubSubMessageID string
	PublishTime     time.Time // zero when unknown
	// index is the record's position in its message, for the dedupe key of
	// a quarantine row should the database refuse it.
	index int
}

// Batch is what one transaction writes.
type Batch struct {
	Calls    []Call
	Rejects  []Reject
	Messages int
}

// Result reports what a committed batch did.
type Result struct {
	BatchID    int64
	Inserted   int
	Duplicates int
	// Rejected counts rejects newly quarantined (a redelivered reject is not
	// counted twice).
	Rejected int
	SHA256   [32]byte
	// MinReceived and MaxReceived bound the inserted rows' received_at (zero
	// when nothing was inserted).
	MinReceived, MaxReceived time.Time
	// NewDay is true when the batch wrote into a day this Writer had not seen.
	NewDay bool
	// Retries counts the attempts the database aborted (deadlock,
	// serialization failure, a partition gone) before this one committed.
	Retries int
}

// inTx is a connection inside a batch's transaction (a *pgx.Conn).
type inTx interface {
	PgConn() *pgconn.PgConn
	Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Writer writes batches. It is safe for concurrent use.
type Writer struct {
	db   Conns
	mu   sync.Mutex
	days map[string]bool // UTC days whose partition/chunk is known to exist
	// staged counts, per backend, the rows moved out of its staging table
	// since that table was last vacuumed.
	staged map[uint32]int
	// unnestMax is unnestMaxRows (tests lower it to cover the staging path).
	unnestMax int
}

// stageVacuumRows: a connection's staging table is vacuumed once this many
// rows have gone through it, which bounds its dead rows (and so what every
// move scans) to a few dozen pages.
const stageVacuumRows = 5000

// NewWriter returns a Writer over db.
func NewWriter(db Conns) *Writer {
	return &Writer{db: db, days: map[string]bool{}, staged: map[uint32]int{}, unnestMax: unnestMaxRows}
}

// Write stores b in one transaction. On error nothing of b is stored; see
// IsDataError for errors caused by the batch's content rather than the
// database's state.
func (w *Writer) Write(ctx context.Context, b *Batch) (Result, error) {
	newDays, err := w.ensureDays(ctx, b)
	if err != nil {
		return Result{}, err
	}
	res, err := w.writeRetrying(ctx, b)
	retries := res.Retries
	if err != nil && isNoPartition(err) {
		// A partition dropped by retention since it was cached: forget every
		// day and try once more.
		w.mu.Lock()
		w.days = map[string]bool{}
		w.mu.Unlock()
		if newDays, err = w.ensureDays(ctx, b); err != nil {
			return Result{}, err
		}
		res, err = w.writeRetrying(ctx, b)
		res.Retries += retries + 1
	}
	if err != nil {
		return Result{}, err
	}
	res.NewDay = len(newDays) > 0
	if res.NewDay {
		// A new day may mean a new TimescaleDB chunk, which carries copies of
		// the readers' grants until they are revoked.
		if err := w.harden(ctx); err != nil {
			return res, nil //nolint:nilerr // the batch is committed; rollup hardens again within a minute
		}
	}
	return res, nil
}

// writeRetrying retries a batch the database aborted to break a deadlock or
// a serialization conflict with a concurrent batch: the transaction left no
// trace, and the conflict is gone once the other one has committed.
func (w *Writer) writeRetrying(ctx context.Context, b *Batch) (Result, error) {
	const attempts = 3
	for i := 1; ; i++ {
		res, err := w.write(ctx, b)
		if err == nil || i == attempts || !isTransient(err) {
			res.Retries = i - 1
			return res, err
		}
	}
}

func isTransient(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && (pg.Code == pgerrcode.DeadlockDetected || pg.Code == pgerrcode.SerializationFailure)
}

func (w *Writer) write(ctx context.Context, b *Batch) (Result, error) {
	conn, err := w.db.Acquire(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("write: acquire: %w", err)
	}
	defer conn.Release()

	// A batch sent as arrays, without rejects, goes in one round trip
	// (writeOneTrip) unless it holds a call stored already. Otherwise two:
	// BEGIN, the staging table (when staged), the batch id and, for a batch
	// sent as arrays, its INSERT in one (the staging table takes its COPY
	// and move besides); emptying the staging table, the batch row and
	// COMMIT in another. A batch that fails between them is rolled back
	// here, or, when even that fails, its connection is discarded by the
	// pool (it is not idle).
	tx := conn.Conn()
	committed := false
	defer func() {
		if !committed {
			tx.Exec(ctx, "ROLLBACK") //nolint:errcheck // see above
		}
	}()
	staged := len(b.Calls) > w.unnestMax
	calls := keyOrder(b.Calls)
	buf := rowBufs.Get().(*rowBuf)
	defer buf.release()
	vals := buf.values(0, calls) // the batch id is set once known
	if !staged && len(calls) > 0 && len(b.Rejects) == 0 {
		res, err := writeOneTrip(ctx, tx, b, calls, vals, &buf.params)
		if !oneTripRefused(err) {
			committed = err == nil
			return res, err
		}
	}
	var res Result
	var stored []bool
	start := &pgx.Batch{}
	start.Queue("BEGIN")
	if staged {
		start.Queue(createStageSQL)
	}
	start.Queue("SELECT nextval('apigee.ingest_batch_id_seq')").QueryRow(func(r pgx.Row) error { return r.Scan(&res.BatchID) })
	if !staged && len(calls) > 0 {
		start.Queue(insertSQL, append(columnArrays(vals), len(calls))...).Query(func(rows pgx.Rows) (err error) {
			stored, err = collectInserted(rows, calls)
			return err
		})
	}
	if err := tx.SendBatch(ctx, start).Close(); err != nil {
		return Result{}, fmt.Errorf("write: start batch: %w", err)
	}
	id := any(res.BatchID) // boxed once: boxing an int64 allocates
	for _, row := range vals {
		row[batchIDColumn] = id
	}

	inserted, err := storeCalls(ctx, tx, res.BatchID, calls, vals, stored)
	if err != nil {
		return Result{}, err
	}
	res.Inserted = len(inserted)
	res.Duplicates = len(b.Calls) - len(inserted)
	if len(inserted) > 0 {
		res.MinReceived, res.MaxReceived = receivedRange(calls, inserted)
	}
	res.SHA256 = hashRows(audit.NewHasher(res.BatchID), vals, inserted)

	if res.Rejected, err = insertRejects(ctx, tx, res.BatchID, b.Rejects); err != nil {
		return Result{}, err
	}

	var minR, maxR *time.Time
	if res.Inserted > 0 {
		minR, maxR = &res.MinReceived, &res.MaxReceived
	}
	end := &pgx.Batch{}
	if staged {
		end.Queue(clearStageSQL)
	}
	end.Queue(`
		INSERT INTO apigee.ingest_batches (batch_id, rows_inserted, rows_duplicate, rows_rejected, messages,
			min_received_at, max_received_at, rows_sha256)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		res.BatchID, res.Inserted, res.Duplicates, res.Rejected, b.Messages, minR, maxR, res.SHA256[:])
	end.Queue("COMMIT")
	if err := tx.SendBatch(ctx, end).Close(); err != nil {
		return Result{}, fmt.Errorf("write: batch row and commit: %w", err)
	}
	committed = true
	if staged {
		w.tidy(ctx, conn, len(b.Calls))
	}
	return res, nil
}

// writeOneTrip writes a batch of new calls sent as arrays, without rejects,
// in one statement, oneTripSQL (its batch id, the rows, their
// invalidations and the batch row in format 2), which is its own
// transaction: one round trip, and no BEGIN or COMMIT to parse and run.
// calls are keyOrder's, vals their RowValues with batch id 0, which is
// what format 2's digest hashes. When a call is stored already, the error
// is the database's unique violation (oneTripRefused) and nothing is
// stored: the caller writes the batch in two round trips (format 1), which
// accounts for duplicates and checks them for key collisions.
//
// The parameters go in binary format, encoded into p (arrayParams), to a
// statement prepared once per connection (pgx keeps it by name), and the
// answer comes back as two binary bigints.
func writeOneTrip(ctx context.Context, tx inTx, b *Batch, calls []Call, vals [][]any, p *copybinary.Params) (Result, error) {
	res := Result{Inserted: len(calls), Duplicates: len(b.Calls) - len(calls)}
	order := messageOrder(calls, nil)
	res.MinReceived, res.MaxReceived = receivedRange(calls, order)
	digest := hashRows(audit.NewDigest(), vals, order)
	p.Reset()
	if err := arrayParams(p, vals); err != nil {
		return Result{}, err
	}
	// In oneTripSQL's order and types: bigint, integer, integer,
	// timestamptz, timestamptz, bytea.
	p.Value(func(w *copybinary.Writer) { w.Int64(int64(len(calls))) })
	p.Value(func(w *copybinary.Writer) { w.Int32(int32(res.Duplicates)) })
	p.Value(func(w *copybinary.Writer) { w.Int32(int32(b.Messages)) })
	p.Value(func(w *copybinary.Writer) { w.Timestamptz(res.MinReceived) })
	p.Value(func(w *copybinary.Writer) { w.Timestamptz(res.MaxReceived) })
	p.Value(func(w *copybinary.Writer) { w.Bytea(digest[:]) })
	sd, err := tx.Prepare(ctx, oneTripStatement, oneTripSQL)
	if err != nil {
		return Result{}, fmt.Errorf("write: one round trip: prepare: %w", err)
	}
	r := tx.PgConn().ExecPrepared(ctx, sd.Name, p.Values(), binaryFormat, binaryFormat).Read()
	if r.Err != nil {
		return Result{}, fmt.Errorf("write: one round trip: %w", r.Err)
	}
	if len(r.Rows) != 1 || len(r.Rows[0]) != 2 || len(r.Rows[0][0]) != 8 || len(r.Rows[0][1]) != 8 {
		return Result{}, fmt.Errorf("write: one round trip: answer is not one row of two bigints")
	}
	res.BatchID = int64(binary.BigEndian.Uint64(r.Rows[0][0]))
	n := int64(binary.BigEndian.Uint64(r.Rows[0][1]))
	if n != int64(len(calls)) {
		// expect_all_stored lets no other count through; the batch is
		// committed, so this can only be reported.
		return Result{}, fmt.Errorf("write: one round trip: batch %d stored %d of %d calls", res.BatchID, n, len(calls))
	}
	res.SHA256 = audit.BindID(res.BatchID, digest)
	return res, nil
}

// oneTripStatement is oneTripSQL's prepared statement's name on each
// connection.
const oneTripStatement = "apigee_ingest_one_trip"

// binaryFormat is the format code list that makes every parameter, or
// every result column, binary (a list of one code applies to all).
var binaryFormat = []int16{pgx.BinaryFormatCode}

// oneTripRefused reports whether writeOneTrip's error means the batch
// holds a call stored already (or stored fewer than it sent), so that it
// is to be written again in two round trips; nothing of it was stored.
func oneTripRefused(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && (pg.Code == pgerrcode.UniqueViolation || pg.Code == notAllNew)
}

// receivedRange returns the least and greatest received_at of the calls
// at the positions order (at least one).
func receivedRange(calls []Call, order []int) (lo, hi time.Time) {
	lo, hi = calls[order[0]].ReceivedAt, calls[order[0]].ReceivedAt
	for _, i := range order[1:] {
		if at := calls[i].ReceivedAt; at.Before(lo) {
			lo = at
		} else if at.After(hi) {
			hi = at
		}
	}
	return lo, hi
}

// messageOrder returns the positions of calls that were stored (stored[i];
// all of them when stored is nil) in the hash's order, (message_id,
// received_at).
func messageOrder(calls []Call, stored []bool) []int {
	order := make([]int, 0, len(calls))
	for i := range calls {
		if stored == nil || stored[i] {
			order = append(order, i)
		}
	}
	slices.SortFunc(order, func(a, b int) int {
		ca, cb := &calls[a], &calls[b]
		if c := strings.Compare(ca.MessageID, cb.MessageID); c != 0 {
			return c
		}
		return ca.ReceivedAt.Compare(cb.ReceivedAt)
	})
	return order
}

// tidy vacuums conn's staging table once enough rows have gone through it.
// The batch is committed whatever happens here: a failed VACUUM is tried
// again after the next batch.
func (w *Writer) tidy(ctx context.Context, conn *pgxpool.Conn, rows int) {
	pid := conn.Conn().PgConn().PID()
	w.mu.Lock()
	w.staged[pid] += rows
	due := w.staged[pid] >= stageVacuumRows
	w.mu.Unlock()
	if !due {
		return
	}
	if _, err := conn.Exec(ctx, "VACUUM apigee_stage_calls"); err != nil {
		return
	}
	w.mu.Lock()
	delete(w.staged, pid) // also forgets the backends of closed connections
	w.mu.Unlock()
}

// HashCalls returns rows_sha256 of a batch's inserted rows in format 1
// (audit.RowsFormat1, the canonical encoding of shared/audit), which the
// verifier recomputes from the rows stored WHERE batch_id = id. calls
// must be in (message_id, received_at) order.
func HashCalls(batchID int64, calls []Call) [32]byte {
	h := audit.NewHasher(batchID)
	rows := &callRows{calls: calls, batchID: batchID}
	for rows.Next() {
		vals, _ := rows.Values()
		h.Row(vals)
	}
	return h.Sum()
}

// hashRows adds rows (RowValues) to h at the positions order, in that
// order, and returns the sum: HashCalls (h from audit.NewHasher) or format
// 2's digest (audit.NewDigest) of rows already built.
func hashRows(h *audit.Hasher, rows [][]any, order []int) [32]byte {
	for _, i := range order {
		h.Row(rows[i])
	}
	return h.Sum()
}

// rowValues is each call's row as COPY writes it and the hash encodes it,
// built once for both.
func rowValues(batchID int64, calls []Call) [][]any {
	return new(rowBuf).values(batchID, calls)
}

// rowBuf holds a batch's RowValues: a value per column and row, which
// point into the calls. Writer.write takes one from rowBufs and gives it
// back emptied: allocated per batch, it was the largest of a batch's
// allocations (16 bytes a value, 34 values a row), and pointers the
// garbage collector had to scan.
type rowBuf struct {
	flat []any
	rows [][]any
	// params is writeOneTrip's parameter buffer.
	params copybinary.Params
}

var rowBufs = sync.Pool{New: func() any { return new(rowBuf) }}

// values is rowValues in buf's memory.
func (buf *rowBuf) values(batchID int64, calls []Call) [][]any {
	n := len(audit.Columns())
	buf.flat = slices.Grow(buf.flat[:0], n*len(calls))[:n*len(calls)]
	buf.rows = slices.Grow(buf.rows[:0], len(calls))[:len(calls)]
	for i := range calls {
		c := &calls[i]
		buf.rows[i] = audit.RowValues(buf.flat[i*n:(i+1)*n:(i+1)*n], c.Record, &c.PubSubMessageID, &c.PublishTime, batchID)
	}
	return buf.rows
}

// release clears buf, so that the pool keeps no call alive, and gives it
// back to rowBufs.
func (buf *rowBuf) release() {
	clear(buf.flat)
	clear(buf.rows)
	rowBufs.Put(buf)
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

// unnestMaxRows: a batch of at most this many calls is sent as column
// arrays in one INSERT (insertSQL); a larger one is copied into the staging
// table (moveSQL). The arrays save the staging table's fixed cost per batch
// (its COPY, DELETE and VACUUM), which is most of a small batch's; COPY's
// cheaper cost per row wins past this size (BenchmarkWrite, rows=80 … 1000).
const unnestMaxRows = 300

// batchIDColumn is batch_id's position in stageColumns.
var batchIDColumn = slices.Index(stageColumns, "batch_id")

// keyOrder returns calls in key order, received_at then message_id, without
// later copies of a key (see firstOfEachKey).
//
// A key (message_id, received_at) may come twice in one batch with
// different Pub/Sub metadata (a publisher retry is a new Pub/Sub message).
// ON CONFLICT would keep one copy, in no defined order, and RETURNING names
// only the key: sending one copy per key makes the stored row, and so
// rows_sha256, the one this function chose, the first delivered (the sort
// is stable).
//
// Rows go in one total order of their keys so that two batches holding the
// same redelivered messages wait on each other in one order and cannot
// deadlock; received_at first, api_calls_key's order, so a batch appends to
// the index's pages instead of splitting them (the index stays ~90 % full)
// and the heap is in time order for the rollup's range scans. insertSQL
// keeps the order its arrays come in; moveSQL sorts again (a heap scan of
// the staging table has no defined order), which costs little on rows
// copied in order: PostgreSQL's sort checks for sorted input first. The
// order also lets collectInserted find a call by its key with a binary
// search.
func keyOrder(calls []Call) []Call {
	if !keysSorted(calls) {
		// Sort positions, not the calls (each is a few hundred bytes).
		perm := make([]int, len(calls))
		for i := range perm {
			perm[i] = i
		}
		slices.SortStableFunc(perm, func(a, b int) int { return compareKeyPtrs(&calls[a], &calls[b]) })
		out := make([]Call, len(calls))
		for k, i := range perm {
			out[k] = calls[i]
		}
		calls = out
	}
	return firstOfEachKey(calls)
}

func keysSorted(calls []Call) bool {
	for i := 1; i < len(calls); i++ {
		if compareKeyPtrs(&calls[i-1], &calls[i]) > 0 {
			return false
		}
	}
	return true
}

func compareKeyPtrs(a, b *Call) int {
	if c := cmp.Compare(a.ReceivedAt.UnixMicro(), b.ReceivedAt.UnixMicro()); c != 0 {
		return c
	}
	return strings.Compare(a.MessageID, b.MessageID)
}

// storeCalls inserts the calls that are new into apigee.api_calls,
// recording the minutes they touched: through the staging table when
// stored is nil (the arrays' INSERT, sent with the batch's start, already
// ran otherwise). calls are keyOrder's, vals their RowValues, stored[i]
// whether calls[i] was stored. It returns the positions of the calls
// inserted, in (message_id, received_at) order.
func storeCalls(ctx context.Context, tx inTx, batchID int64, calls []Call, vals [][]any, stored []bool) ([]int, error) {
	if len(calls) == 0 {
		return nil, nil
	}
	if stored == nil {
		if err := copyStage(ctx, tx, vals); err != nil {
			return nil, err
		}
		rows, err := tx.Query(ctx, moveSQL, batchID, len(calls))
		if err != nil {
			return nil, fmt.Errorf("write: insert: %w", err)
		}
		if stored, err = collectInserted(rows, calls); err != nil {
			return nil, err
		}
	}
	order := messageOrder(calls, stored)
	if len(order) < len(calls) {
		if err := checkSkipped(ctx, tx, calls, stored); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// copyBufs holds the buffers of copyStage's streams, which are as large as
// the batch (about 400 bytes a row): one per batch would be most of what a
// batch allocates.
var copyBufs = sync.Pool{New: func() any { return new([]byte) }}

// copyStage copies rows (RowValues) into the staging table, encoded by
// copyRows rather than pgx's CopyFrom (see shared/copybinary).
func copyStage(ctx context.Context, tx inTx, vals [][]any) error {
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	var cw copybinary.Writer
	cw.Reset(*buf)
	if err := copyRows(&cw, vals); err != nil {
		return err
	}
	data := cw.Finish()
	*buf = data[:0]
	tag, err := tx.PgConn().CopyFrom(ctx, bytes.NewReader(data), copyStageSQL)
	if err != nil {
		return fmt.Errorf("write: copy: %w", err)
	}
	if n := tag.RowsAffected(); n != int64(len(vals)) {
		return fmt.Errorf("write: copy: staged %d of %d rows", n, len(vals))
	}
	return nil
}

// collectInserted reads what insertedSelect returns: which of calls (in key
// order, one per key) were stored.
func collectInserted(rows pgx.Rows, calls []Call) ([]bool, error) {
	defer rows.Close()
	stored := make([]bool, len(calls))
	var count int64
	for rows.Next() {
		var id *string
		var at *time.Time
		if err := rows.Scan(&count, &id, &at); err != nil {
			return nil, fmt.Errorf("write: insert: %w", err)
		}
		if id == nil {
			continue // every call stored (count = len(calls)), or none
		}
		key := Call{Record: &record.Record{MessageID: *id, ReceivedAt: *at}}
		i := sort.Search(len(calls), func(i int) bool { return compareKeyPtrs(&calls[i], &key) >= 0 })
		if i == len(calls) || compareKeyPtrs(&calls[i], &key) != 0 {
			return nil, fmt.Errorf("write: insert returned unknown key %q", *id)
		}
		stored[i] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("write: insert: %w", err)
	}
	if count == int64(len(calls)) {
		for i := range stored {
			stored[i] = true
		}
	}
	return stored, nil
}

// KeyCollisionError reports a call that ON CONFLICT skipped although no
// stored row has its message_id and received_at: a call with another
// message_id, the same received_at and the same apigee.call_key is stored
// (migration 00017 puts the odds below 10⁻⁵ over an installation's life).
// It is a data error, so the delivery is quarantined, not dropped.
type KeyCollisionError struct {
	MessageID  string
	ReceivedAt time.Time
}

func (e *KeyCollisionError) Error() string {
	return fmt.Sprintf("write: message_id %q at %s has the dedupe key (apigee.call_key) of a stored call with another message_id",
		e.MessageID, e.ReceivedAt.UTC().Format(time.RFC3339Nano))
}

// skippedSQL returns the first of the calls ON CONFLICT skipped that is not
// stored under its own message_id: the key and received_at find the
// candidates through api_calls_key, message_id tells them apart.
const skippedSQL = `
SELECT d.id, d.at FROM unnest($1::text[], $2::timestamptz[]) AS d(id, at)
WHERE NOT EXISTS (
	SELECT 1 FROM apigee.api_calls a
	WHERE a.received_at = d.at AND apigee.call_key(a.message_id) = apigee.call_key(d.id) AND a.message_id = d.id)
LIMIT 1`

// checkSkipped makes sure each call not stored (stored[i] false) is a
// duplicate of a stored row, and not a key collision: the dedupe key is a
// hash of message_id, and exactly-once must not become at-most-once. It
// costs one index lookup per duplicate, and nothing for a batch without
// duplicates.
func checkSkipped(ctx context.Context, tx inTx, calls []Call, stored []bool) error {
	var ids []string
	var ats []time.Time
	for i := range calls {
		if !stored[i] {
			ids = append(ids, calls[i].MessageID)
			ats = append(ats, calls[i].ReceivedAt)
		}
	}
	var e KeyCollisionError
	err := tx.QueryRow(ctx, skippedSQL, ids, ats).Scan(&e.MessageID, &e.ReceivedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("write: check duplicates: %w", err)
	}
	return &e
}

func insertRejects(ctx context.Context, tx inTx, batchID int64, rejects []Reject) (int, error) {
	if len(rejects) == 0 {
		return 0, nil
	}
	// Key order, for the same reason as moveSQL's ORDER BY.
	rejects = slices.Clone(rejects)
	slices.SortFunc(rejects, func(a, b Reject) int {
		if c := strings.Compare(a.DedupeKey, b.DedupeKey); c != 0 {
			return c
		}
		return a.ReceivedAt.Compare(b.ReceivedAt)
	})
	cols := rejectColumns(rejects)
	tag, err := tx.Exec(ctx, insertRejectsSQL, append(cols, batchID)...)
	if err != nil {
		return 0, fmt.Errorf("write: quarantine: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// ensureDays makes sure every UTC day the batch writes into has its
// partition (plain PostgreSQL; a no-op on TimescaleDB), in its own short
// transaction so the batch never holds the partition-creation lock.
func (w *Writer) ensureDays(ctx context.Context, b *Batch) ([]string, error) {
	var missing []string
	seen := map[string]bool{}
	w.mu.Lock()
	add := func(t time.Time) {
		d := t.UTC().Format(time.DateOnly)
		if !w.days[d] && !seen[d] {
			seen[d] = true
			missing = append(missing, d)
		}
	}
	for i := range b.Calls {
		add(b.Calls[i].ReceivedAt)
	}
	for i := range b.Rejects {
		add(b.Rejects[i].ReceivedAt)
	}
	w.mu.Unlock()
	if len(missing) == 0 {
		return nil, nil
	}
	conn, err := w.db.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("write: acquire: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT apigee.ensure_partitions(d, d) FROM unnest($1::date[]) AS d", missing); err != nil {
		return nil, fmt.Errorf("write: ensure partitions: %w", err)
	}
	w.mu.Lock()
	for _, d := range missing {
		w.days[d] = true
	}
	w.mu.Unlock()
	return missing, nil
}

func (w *Writer) harden(ctx context.Context) error {
	conn, err := w.db.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("write: acquire: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT apigee.harden_chunks()"); err != nil {
		return fmt.Errorf("write: harden chunks: %w", err)
	}
	return nil
}

// IsDataError reports whether err was caused by the batch's content (a
// PostgreSQL data exception or integrity violation, or a key collision)
// rather than by the database being unavailable: retrying the same batch
// cannot succeed, but writing its messages one by one isolates the culprit.
func IsDataError(err error) bool {
	var kc *KeyCollisionError
	if errors.As(err, &kc) {
		return true
	}
	var pg *pgconn.PgError
	if !errors.As(err, &pg) || isNoPartition(err) {
		return false
	}
	return pgerrcode.IsDataException(pg.Code) || pgerrcode.IsIntegrityConstraintViolation(pg.Code)
}

// isNoPartition reports a row that no partition of its table accepts: its
// day's partition is missing (dropped by retention after this Writer cached
// it). PostgreSQL reports that as a check_violation like a failed CHECK, but
// without a constraint name (ExecFindPartition and the partition-constraint
// check set only the table), whereas every CHECK, NOT NULL-on-domain and
// domain violation names its constraint. That field is part of the error
// protocol, unlike the message text, which is translated with lc_messages.
func isNoPartition(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == pgerrcode.CheckViolation && pg.ConstraintName == "" && pg.TableName != ""
}

// firstOfEachKey returns calls, in key order, without later copies of a
// key: they are next to the first delivered copy, which the stable sort
// kept first. calls itself when there are none.
func firstOfEachKey(calls []Call) []Call {
	for i := 1; i < len(calls); i++ {
		if compareKeyPtrs(&calls[i-1], &calls[i]) != 0 {
			continue
		}
		out := append(make([]Call, 0, len(calls)-1), calls[:i]...)
		for j := i + 1; j < len(calls); j++ {
			if compareKeyPtrs(&out[len(out)-1], &calls[j]) != 0 {
				out = append(out, calls[j])
			}
		}
		return out
	}
	return calls
}
