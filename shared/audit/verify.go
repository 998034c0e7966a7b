package audit

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"apigee-timescale/shared/record"
)

// Kind says how a batch no longer matches what was sealed.
type Kind string

// The kinds of damage Verify reports.
const (
	ChangedRow   Kind = "changed row"   // the rows are there but hash differently, or their time range moved
	MissingRow   Kind = "missing row"   // fewer rows than the batch inserted
	ExtraRow     Kind = "extra row"     // more rows carry the batch's id than it inserted
	MissingBatch Kind = "missing batch" // a sealed batch row is gone
	BrokenLink   Kind = "broken link"   // a batch row or a seal no longer matches the chain
)

// Problem is the first batch that no longer matches.
type Problem struct {
	BatchID int64  `json:"batch_id"`
	Kind    Kind   `json:"kind"`
	Detail  string `json:"detail"`
}

func (p *Problem) String() string {
	return fmt.Sprintf("batch %d: %s: %s", p.BatchID, p.Kind, p.Detail)
}

// Report is what one Verify call checked.
type Report struct {
	// Batches and Rows count what was checked; Retained the batches some
	// or all of whose rows retention dropped (their rows_sha256 cannot be
	// recomputed, their seal still is); Unsealed the batches after the
	// chain's head, whose rows were checked but which no seal covers yet.
	Batches  int64 `json:"batches"`
	Rows     int64 `json:"rows"`
	Retained int64 `json:"retained,omitempty"`
	Unsealed int64 `json:"unsealed,omitempty"`
	// Through is the last batch checked; Done says it was the last one
	// there is (else the deadline stopped Verify: continue From Through).
	Through int64 `json:"through"`
	Done    bool  `json:"done"`
	// HeadBatch and HeadSeal are the chain's head as recomputed.
	HeadBatch int64    `json:"head_batch,omitempty"`
	HeadSeal  string   `json:"head_seal,omitempty"`
	Problem   *Problem `json:"problem,omitempty"`
}

// Options bound a Verify call.
type Options struct {
	// From continues after this batch, trusting its stored seal (0: from
	// the first batch, trusting nothing).
	From int64
	// Deadline, when set, stops Verify after the batch that passes it.
	Deadline time.Time
	// Orphans also looks, once every batch passed, for rows whose batch_id
	// no batch row has (one more scan of apigee.api_calls).
	Orphans bool
}

// Querier is a connection, a pool or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// page is how many batch rows Verify reads at a time.
const page = 1000

type entry struct {
	id       int64
	sealed   bool
	prevID   *int64
	seal     []byte
	hasBatch bool
	batch    Batch
	// format is the batch row's rows_sha256_format (RowsFormat1 when the
	// row is gone).
	format int16
}

type span struct{ from, to time.Time }

// Verify recomputes, batch by batch in id order, each batch's rows_sha256
// from the rows stored now and the seal chain from the first batch (or
// from opt.From), and stops at the first Problem. Time is linear in rows:
// one indexed query per batch. It reads as any role that may read
// apigee.api_calls, apigee.ingest_batches and the audit tables.
func Verify(ctx context.Context, q Querier, opt Options) (Report, error) {
	var rep Report
	var prev [32]byte
	var prevID *int64
	if opt.From > 0 {
		var s []byte
		if err := q.QueryRow(ctx, "SELECT seal FROM apigee.audit_seals WHERE batch_id = $1", opt.From).Scan(&s); err != nil {
			return rep, fmt.Errorf("verify: seal of batch %d: %w", opt.From, err)
		}
		copy(prev[:], s)
		id := opt.From
		prevID = &id
	}
	var head int64
	if err := q.QueryRow(ctx, "SELECT coalesce(max(batch_id), 0) FROM apigee.audit_seals").Scan(&head); err != nil {
		return rep, fmt.Errorf("verify: chain head: %w", err)
	}
	dropped, err := retainedSpans(ctx, q)
	if err != nil {
		return rep, err
	}
	rv := newRowVerifier()
	after := opt.From
	for {
		entries, err := readEntries(ctx, q, after)
		if err != nil {
			return rep, err
		}
		if len(entries) == 0 {
			rep.Done = true
			if opt.Orphans {
				rep.Problem, err = orphans(ctx, q)
			}
			return rep, err
		}
		for lo := 0; lo < len(entries); lo += pipelined {
			stop, err := checkGroup(ctx, q, rv, entries[lo:min(lo+pipelined, len(entries))], &prev, &prevID, head, dropped, opt.Deadline, &rep)
			if err != nil || stop {
				return rep, err
			}
		}
		after = entries[len(entries)-1].id
	}
}

// pipelined is how many batches' row queries go to the server at once: it
// works on the next ones while this side hashes, which is about twice as
// fast as one query at a time.
const pipelined = 16

// checkGroup checks a group of batches whose row queries it sends as one
// pipeline. stop is true when a Problem or the deadline ends Verify.
func checkGroup(ctx context.Context, q Querier, rv *rowVerifier, group []entry, prev *[32]byte, prevID **int64,
	head int64, dropped []span, deadline time.Time, rep *Report) (stop bool, err error) {
	b := &pgx.Batch{}
	for i := range group {
		b.Queue(rv.sql, group[i].id)
	}
	br := q.SendBatch(ctx, b)
	defer func() {
		if cerr := br.Close(); cerr != nil && err == nil && !stop {
			err = fmt.Errorf("verify: rows: %w", cerr)
		}
	}()
	for i := range group {
		e := &group[i]
		rows, err := br.Query()
		if err != nil {
			return true, fmt.Errorf("verify: rows of batch %d: %w", e.id, err)
		}
		p, err := check(rows, rv, e, prev, prevID, head, dropped, rep)
		rows.Close()
		if err != nil {
			return true, err
		}
		rep.Through = e.id
		if p != nil {
			rep.Problem = p
			return true, nil
		}
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			return true, nil
		}
	}
	return false, nil
}

// check verifies one batch: its seal against the chain, then its rows
// against the (now trusted) batch row.
func check(rows pgx.Rows, rv *rowVerifier, e *entry, prev *[32]byte, prevID **int64, head int64, dropped []span, rep *Report) (*Problem, error) {
	rep.Batches++
	switch {
	case e.sealed && !e.hasBatch:
		return &Problem{e.id, MissingBatch, "the batch is sealed but its apigee.ingest_batches row is gone"}, nil
	case !e.sealed && e.id < head:
		return &Problem{e.id, BrokenLink, fmt.Sprintf("the batch is not in the chain, whose head is batch %d", head)}, nil
	case e.sealed:
		if !sameID(e.prevID, *prevID) {
			return &Problem{e.id, BrokenLink, fmt.Sprintf("its seal links to batch %s, but the previous batch is %s", idText(e.prevID), idText(*prevID))}, nil
		}
		want := Seal(*prev, e.batch)
		if !bytes.Equal(want[:], e.seal) {
			return &Problem{e.id, BrokenLink, "the batch row (counts, time range or rows_sha256) no longer matches its seal"}, nil
		}
		*prev = want
		id := e.id
		*prevID = &id
		rep.HeadBatch, rep.HeadSeal = e.id, hex.EncodeToString(want[:])
	default:
		rep.Unsealed++
	}
	return rv.check(rows, &e.batch, e.format, dropped, rep)
}

func sameID(a, b *int64) bool { return (a == nil && b == nil) || (a != nil && b != nil && *a == *b) }

func idText(p *int64) string {
	if p == nil {
		return "none"
	}
	return fmt.Sprint(*p)
}

func readEntries(ctx context.Context, q Querier, after int64) ([]entry, error) {
	rows, err := q.Query(ctx, `
		SELECT batch_id, s.batch_id IS NOT NULL, s.prev_batch_id, s.seal, b.batch_id IS NOT NULL,
			coalesce(b.rows_inserted, 0), coalesce(b.rows_duplicate, 0), coalesce(b.rows_rejected, 0),
			coalesce(b.messages, 0), b.min_received_at, b.max_received_at, b.rows_sha256,
			coalesce(b.rows_sha256_format, 1)
		FROM apigee.audit_seals s FULL JOIN apigee.ingest_batches b USING (batch_id)
		WHERE batch_id > $1
		ORDER BY batch_id
		LIMIT $2`, after, page)
	if err != nil {
		return nil, fmt.Errorf("verify: read batches: %w", err)
	}
	var out []entry
	var e entry
	_, err = pgx.ForEachRow(rows, []any{&e.id, &e.sealed, &e.prevID, &e.seal, &e.hasBatch,
		&e.batch.Inserted, &e.batch.Duplicates, &e.batch.Rejected, &e.batch.Messages,
		&e.batch.MinReceived, &e.batch.MaxReceived, &e.batch.RowsSHA256, &e.format}, func() error {
		e.batch.ID = e.id
		out = append(out, e)
		e = entry{}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("verify: read batches: %w", err)
	}
	return out, nil
}

// orphans finds the lowest batch_id that rows carry but no batch row has:
// rows added under an id no batch committed, or left behind by a batch
// row deleted before it was sealed.
func orphans(ctx context.Context, q Querier) (*Problem, error) {
	var id, n int64
	err := q.QueryRow(ctx, `
		SELECT a.batch_id, count(*) FROM apigee.api_calls a
		WHERE NOT EXISTS (SELECT 1 FROM apigee.ingest_batches b WHERE b.batch_id = a.batch_id)
		GROUP BY 1 ORDER BY 1 LIMIT 1`).Scan(&id, &n)
	if err == pgx.ErrNoRows {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("verify: rows without a batch: %w", err)
	}
	return &Problem{id, ExtraRow, fmt.Sprintf("%d rows carry this batch id, which no batch row has", n)}, nil
}

func retainedSpans(ctx context.Context, q Querier) ([]span, error) {
	rows, err := q.Query(ctx, "SELECT range_from, range_to FROM apigee.audit_retained ORDER BY range_from")
	if err != nil {
		return nil, fmt.Errorf("verify: retained ranges: %w", err)
	}
	var out []span
	var s span
	if _, err := pgx.ForEachRow(rows, []any{&s.from, &s.to}, func() error { out = append(out, s); return nil }); err != nil {
		return nil, fmt.Errorf("verify: retained ranges: %w", err)
	}
	return out, nil
}

// overlapsDropped reports whether [lo, hi] meets a range retention dropped.
func overlapsDropped(lo, hi time.Time, dropped []span) bool {
	for _, s := range dropped {
		if lo.Before(s.to) && !hi.Before(s.from) {
			return true
		}
	}
	return false
}

// rowVerifier rehashes a batch's stored rows; it reuses its scan targets.
type rowVerifier struct {
	sql     string
	targets []any
	vals    []any
	kinds   []string // SQL type per column
}

func newRowVerifier() *rowVerifier {
	cols := Columns()
	quoted := make([]string, len(cols))
	kinds := make([]string, len(cols))
	types := map[string]string{"pubsub_message_id": "text", "publish_time": "timestamptz", "batch_id": "bigint"}
	for _, f := range record.Columns() {
		types[f.Column] = f.SQLType
	}
	for i, c := range cols {
		quoted[i] = pgx.Identifier{c}.Sanitize()
		kinds[i] = types[c]
	}
	rv := &rowVerifier{
		// The hash's order: message_id bytewise (COLLATE "C", as Go compares
		// strings), then received_at.
		sql: "SELECT " + strings.Join(quoted, ", ") + ` FROM apigee.api_calls WHERE batch_id = $1
			ORDER BY message_id COLLATE "C", received_at`,
		kinds: kinds,
		vals:  make([]any, len(cols)),
	}
	rv.targets = make([]any, len(cols))
	for i, k := range kinds {
		switch k {
		case "text":
			rv.targets[i] = new(*string)
		case "timestamptz":
			rv.targets[i] = new(*time.Time)
		case "smallint", "integer", "bigint":
			rv.targets[i] = new(*int64)
		case "boolean":
			rv.targets[i] = new(*bool)
		case "inet":
			rv.targets[i] = new(*netip.Prefix)
		case "text[]":
			rv.targets[i] = new([]string)
		case "jsonb":
			rv.targets[i] = new([]byte)
		default:
			panic("audit: no scan target for " + k)
		}
	}
	return rv
}

// values turns the scanned targets into what RowValues gives for the same
// row, so the Hasher writes the same bytes.
func (rv *rowVerifier) values() []any {
	for i, t := range rv.targets {
		switch x := t.(type) {
		case **string:
			rv.vals[i] = *x
		case **time.Time:
			rv.vals[i] = *x
		case **int64:
			rv.vals[i] = *x
		case **bool:
			rv.vals[i] = *x
		case **netip.Prefix:
			if *x == nil {
				rv.vals[i] = nil
			} else {
				rv.vals[i] = (*x).Addr()
			}
		case *[]string:
			rv.vals[i] = *x
		case *[]byte:
			if *x == nil {
				rv.vals[i] = []byte(nil)
			} else {
				rv.vals[i] = AppendCanonicalJSON(nil, *x)
			}
		}
	}
	return rv.vals
}

// stored is what a batch's rows hash to now.
type stored struct {
	sum    [32]byte
	n      int64
	lo, hi time.Time
}

// hash hashes rows, the stored rows of batch batchID, in format.
func (rv *rowVerifier) hash(rows pgx.Rows, batchID int64, format int16) (stored, error) {
	var st stored
	h := NewHasher(batchID)
	if format == RowsFormat2 {
		h = NewDigest()
	}
	_, err := pgx.ForEachRow(rows, rv.targets, func() error {
		vals := rv.values()
		if format == RowsFormat2 {
			vals[batchIDColumn] = zeroID
		}
		at := *vals[0].(*time.Time)
		if st.n == 0 || at.Before(st.lo) {
			st.lo = at
		}
		if st.n == 0 || at.After(st.hi) {
			st.hi = at
		}
		st.n++
		h.Row(vals)
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("verify: rows of batch %d: %w", batchID, err)
	}
	st.sum = h.Sum()
	if format == RowsFormat2 {
		st.sum = BindID(batchID, st.sum)
	}
	return st, nil
}

// batchIDColumn is batch_id's position in Columns; zeroID is the batch_id
// format 2's digest writes (what RowValues gives for batch id 0).
var (
	batchIDColumn     = slices.Index(columns, "batch_id")
	zeroID        any = int64(0)
)

// HashStored returns the rows_sha256 of the rows stored now under batchID,
// in the format its batch row records (format 1 without one), and how many
// rows there are.
func HashStored(ctx context.Context, q Querier, batchID int64) ([32]byte, int64, error) {
	format := RowsFormat1
	err := q.QueryRow(ctx, "SELECT rows_sha256_format FROM apigee.ingest_batches WHERE batch_id = $1", batchID).Scan(&format)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return [32]byte{}, 0, fmt.Errorf("verify: format of batch %d: %w", batchID, err)
	}
	rv := newRowVerifier()
	rows, err := q.Query(ctx, rv.sql, batchID)
	if err != nil {
		return [32]byte{}, 0, fmt.Errorf("verify: rows of batch %d: %w", batchID, err)
	}
	st, err := rv.hash(rows, batchID, format)
	return st.sum, st.n, err
}

func (rv *rowVerifier) check(rows pgx.Rows, b *Batch, format int16, dropped []span, rep *Report) (*Problem, error) {
	st, err := rv.hash(rows, b.ID, format)
	if err != nil {
		return nil, err
	}
	n, lo, hi := st.n, st.lo, st.hi
	rep.Rows += n
	if b.MinReceived != nil && b.MaxReceived != nil && overlapsDropped(*b.MinReceived, *b.MaxReceived, dropped) {
		// Retention took some or all of the batch's days: only a count
		// above what it inserted still means something.
		rep.Retained++
		if n > b.Inserted {
			return &Problem{b.ID, ExtraRow, fmt.Sprintf("%d rows carry the batch's id, it inserted %d", n, b.Inserted)}, nil
		}
		return nil, nil
	}
	switch sum := st.sum; {
	case n < b.Inserted:
		return &Problem{b.ID, MissingRow, fmt.Sprintf("%d rows of the %d it inserted are left", n, b.Inserted)}, nil
	case n > b.Inserted:
		return &Problem{b.ID, ExtraRow, fmt.Sprintf("%d rows carry the batch's id, it inserted %d", n, b.Inserted)}, nil
	case !bytes.Equal(sum[:], b.RowsSHA256):
		return &Problem{b.ID, ChangedRow, fmt.Sprintf("its %d rows hash to %x, the batch recorded %x", n, sum, b.RowsSHA256)}, nil
	case n > 0 && (b.MinReceived == nil || b.MaxReceived == nil || !lo.Equal(*b.MinReceived) || !hi.Equal(*b.MaxReceived)):
		return &Problem{b.ID, ChangedRow, "the rows' received_at range differs from the batch's"}, nil
	}
	return nil, nil
}

// TamperedError reports a Problem as an error, for callers that fail on it.
type TamperedError struct{ Problem Problem }

func (e *TamperedError) Error() string { return "audit: tampered: " + e.Problem.String() }
