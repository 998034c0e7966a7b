// Package audit holds what ingest and the verifier must agree on byte for
// byte: the canonical encoding of a batch's rows (rows_sha256), the seal
// that chains batches together, and the verifier that recomputes both from
// what the database stores now.
package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"hash"
	"strconv"
	"time"

	"apigee-timescale/shared/record"
)

// messageColumns follow the record's columns: they come from the Pub/Sub
// message and the batch, not from the record.
var messageColumns = []string{"pubsub_message_id", "publish_time", "batch_id"}

// columns is the hash order: the field table's columns by ordinal, then
// the message's. It is also ingest's COPY order.
var columns = func() []string {
	var cols []string
	for _, f := range record.Columns() {
		cols = append(cols, f.Column)
	}
	return append(cols, messageColumns...)
}()

// extraColumn is the one column whose JSON the hash canonicalises: it holds
// unknown fields as the gateway sent them, which jsonb then normalises.
var extraColumn = func() int {
	for i, c := range columns {
		if c == "extra" {
			return i
		}
	}
	panic("audit: no extra column")
}()

// Columns returns the stored columns of apigee.api_calls in hash order.
func Columns() []string { return append([]string(nil), columns...) }

// Hasher computes rows_sha256, the SHA-256 of a batch's inserted rows.
//
// The encoding is the batch id as 8 big-endian bytes, then one bracketed,
// comma-separated list per row, in Columns order, each followed by "\n";
// rows sorted by (message_id, received_at), message_id compared bytewise.
// Values: strings and timestamps quoted as Go's strconv.Quote does (fast,
// and unambiguous), timestamps as RFC 3339 UTC with microseconds, NULL as
// null, numbers and booleans bare, inet and text[] as JSON strings and
// arrays, json columns compact with object keys sorted bytewise (see
// CanonicalJSON for extra; attributes, a map of strings, is so already).
type Hasher struct {
	h   hash.Hash
	buf []byte
}

// NewHasher starts the hash of batch batchID.
func NewHasher(batchID int64) *Hasher {
	h := &Hasher{h: sha256.New(), buf: make([]byte, 0, 1024)}
	var id [8]byte
	binary.BigEndian.PutUint64(id[:], uint64(batchID))
	h.h.Write(id[:])
	return h
}

// Row adds one row, its values in Columns order as RowValues returns them.
func (h *Hasher) Row(vals []any) {
	b := append(h.buf[:0], '[')
	for i, v := range vals {
		if i > 0 {
			b = append(b, ',')
		}
		if j, ok := v.([]byte); ok && i == extraColumn && j != nil {
			b = AppendCanonicalJSON(b, j)
			continue
		}
		b = appendCanonical(b, v)
	}
	b = append(b, ']', '\n')
	h.h.Write(b)
	h.buf = b
}

// Sum returns the hash of the rows added so far.
func (h *Hasher) Sum() [32]byte {
	var sum [32]byte
	copy(sum[:], h.h.Sum(nil))
	return sum
}

// RowValues returns r's row in Columns order, as COPY writes it and the
// hash encodes it, reusing dst when it is long enough.
func RowValues(dst []any, r *record.Record, pubsubID string, publish time.Time, batchID int64) []any {
	cols := recordColumns
	if len(dst) < len(columns) {
		dst = make([]any, len(columns))
	}
	for i := range cols {
		dst[i] = cols[i].Value(r)
	}
	n := len(cols)
	dst[n], dst[n+1], dst[n+2] = nullString(pubsubID), nullTime(publish), batchID
	return dst[:len(columns)]
}

var recordColumns = record.Columns()

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

func appendCanonical(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...)
	case time.Time:
		return strconv.AppendQuote(b, x.UTC().Format("2006-01-02T15:04:05.000000Z07:00"))
	case *time.Time:
		if x == nil {
			return append(b, "null"...)
		}
		return appendCanonical(b, *x)
	case []byte: // json columns
		if x == nil {
			return append(b, "null"...)
		}
		return append(b, x...)
	case *string:
		if x == nil {
			return append(b, "null"...)
		}
		return strconv.AppendQuote(b, *x)
	case *int32:
		if x == nil {
			return append(b, "null"...)
		}
		return strconv.AppendInt(b, int64(*x), 10)
	case *int16:
		if x == nil {
			return append(b, "null"...)
		}
		return strconv.AppendInt(b, int64(*x), 10)
	case *int64:
		if x == nil {
			return append(b, "null"...)
		}
		return strconv.AppendInt(b, *x, 10)
	case *bool:
		if x == nil {
			return append(b, "null"...)
		}
		return strconv.AppendBool(b, *x)
	case int16:
		return strconv.AppendInt(b, int64(x), 10)
	case int64:
		return strconv.AppendInt(b, x, 10)
	case string:
		return strconv.AppendQuote(b, x)
	default: // netip.Addr, []string
		j, _ := json.Marshal(x)
		return append(b, j...)
	}
}
