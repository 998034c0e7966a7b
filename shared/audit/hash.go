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
	"maps"
	"net/netip"
	"strconv"
	"time"

	"apigee-timescale/shared/record"
)

// messageColumns follow the record's columns: they come from the Pub/Sub
// message and the batch, not from the record.
var messageColumns = []string{"pubsub_message_id", "publish_time", "batch_id"}

// recordColumns is the field table's stored fields in hash order: the
// first revision's by ordinal, then those added later (Field.Added > 0),
// which follow the message's columns.
var recordColumns, firstAdded = func() ([]record.Field, int) {
	var first, added []record.Field
	for _, f := range record.Columns() {
		if f.Added > 0 {
			added = append(added, f)
		} else {
			first = append(first, f)
		}
	}
	return append(first, added...), len(first) + len(messageColumns)
}()

// columns is the hash order: the first revision's record columns, the
// message's, then the record columns added later. It is also ingest's COPY
// order.
var columns = func() []string {
	var cols []string
	for _, f := range recordColumns[:firstAdded-len(messageColumns)] {
		cols = append(cols, f.Column)
	}
	cols = append(cols, messageColumns...)
	for _, f := range recordColumns[firstAdded-len(messageColumns):] {
		cols = append(cols, f.Column)
	}
	return cols
}()

// messageTypes are the SQL types of messageColumns.
var messageTypes = map[string]string{"pubsub_message_id": "text", "publish_time": "timestamptz", "batch_id": "bigint"}

// SQLTypes returns the SQL type of each column, in Columns order.
func SQLTypes() []string {
	types := map[string]string{}
	maps.Copy(types, messageTypes)
	for _, f := range recordColumns {
		types[f.Column] = f.SQLType
	}
	out := make([]string, len(columns))
	for i, c := range columns {
		out[i] = types[c]
	}
	return out
}

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
// A column added after the first revision (Field.Added) is written only
// when it is not NULL, after the others, as ,"column":value — so a row
// stored before the column existed (NULL there) hashes as it did, and the
// name keeps the encoding unambiguous whichever added columns are set.
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

// The formats of rows_sha256, as apigee.ingest_batches.rows_sha256_format
// records them (migration 00027).
const (
	// RowsFormat1 is the Hasher of NewHasher: the batch id first, then the
	// rows, each with its batch_id.
	RowsFormat1 int16 = 1
	// RowsFormat2 is BindID(id, D), D the digest of NewDigest: the same
	// rows with batch_id written as 0, and the id bound last, so that the
	// database can bind it (sha256(int8send(id) || D)) in the transaction
	// that takes it from the sequence, and ingest needs no round trip to
	// learn it first.
	RowsFormat2 int16 = 2
)

// NewDigest starts D, format 2's digest of a batch's rows: the encoding of
// NewHasher without the id in front. Each row's batch_id must be 0
// (RowValues with batchID 0): the id is bound by BindID instead.
func NewDigest() *Hasher {
	return &Hasher{h: sha256.New(), buf: make([]byte, 0, 1024)}
}

// BindID returns format 2's rows_sha256 of batch batchID from its rows'
// digest d (NewDigest): SHA-256(the id as 8 big-endian bytes ‖ d), which
// is what PostgreSQL computes as sha256(int8send(id) || d).
func BindID(batchID int64, d [32]byte) [32]byte {
	var b [8 + 32]byte
	binary.BigEndian.PutUint64(b[:8], uint64(batchID))
	copy(b[8:], d[:])
	return sha256.Sum256(b[:])
}

// Row adds one row, its values in Columns order as RowValues returns them.
func (h *Hasher) Row(vals []any) {
	b := append(h.buf[:0], '[')
	for i, v := range vals {
		if i >= firstAdded {
			b = appendAdded(b, columns[i], v)
			continue
		}
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

// appendAdded writes an added column's ,"column":value, or nothing for NULL.
func appendAdded(b []byte, column string, v any) []byte {
	n := len(b)
	b = append(b, ',')
	b = strconv.AppendQuote(b, column)
	b = append(b, ':')
	m := len(b)
	b = appendCanonical(b, v)
	if string(b[m:]) == "null" {
		return b[:n]
	}
	return b
}

// Sum returns the hash of the rows added so far.
func (h *Hasher) Sum() [32]byte {
	var sum [32]byte
	copy(sum[:], h.h.Sum(nil))
	return sum
}

// RowValues returns r's row in Columns order, as COPY writes it and the
// hash encodes it, reusing dst when it is long enough. The row points into
// r, pubsubID and publish (see record.Field.Value), which must outlive it.
func RowValues(dst []any, r *record.Record, pubsubID *string, publish *time.Time, batchID int64) []any {
	if len(dst) < len(columns) {
		dst = make([]any, len(columns))
	}
	n := firstAdded - len(messageColumns)
	for i := range n {
		dst[i] = recordColumns[i].Value(r)
	}
	dst[n], dst[n+1], dst[n+2] = nullString(pubsubID), nullTime(publish), batchID
	for i := n; i < len(recordColumns); i++ {
		dst[i+len(messageColumns)] = recordColumns[i].Value(r)
	}
	return dst[:len(columns)]
}

func nullString(s *string) *string {
	if *s == "" {
		return nil
	}
	return s
}

func nullTime(t *time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return t
}

// timestampLayout is how the hash writes a timestamp: RFC 3339 in UTC
// with microseconds, the precision PostgreSQL keeps.
const timestampLayout = "2006-01-02T15:04:05.000000Z07:00"

// appendTimestamp is t.UTC().AppendFormat(b, timestampLayout), written out
// for the years 0 to 9999 (the only ones RFC 3339 has): interpreting the
// layout cost a sixth of the hash (callgrind, make bench's batch path).
func appendTimestamp(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, timestampLayout)
	}
	hour, minute, sec := t.Clock()
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, 'T')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, minute, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	b = append(b, '.')
	b = appendDigits(b, t.Nanosecond()/1000, 6) // truncated, as the layout's .000000 is
	return append(b, 'Z')
}

// appendQuotedTime is a timestamp as the hash writes it. The layout's
// output is printable ASCII without quotes or backslashes, which
// strconv.Quote leaves as it is.
func appendQuotedTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = appendTimestamp(b, t)
	return append(b, '"')
}

// appendDigits writes v, 0 <= v < 10^width, in width decimal digits.
func appendDigits(b []byte, v, width int) []byte {
	var d [6]byte
	for i := width - 1; i >= 0; i-- {
		d[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, d[:width]...)
}

// appendQuoted is strconv.AppendQuote, without its rune-by-rune scan for
// the common string that is printable ASCII with nothing to escape.
func appendQuoted(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return strconv.AppendQuote(b, s)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendCanonical(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...)
	case time.Time:
		return appendQuotedTime(b, x)
	case *time.Time:
		if x == nil {
			return append(b, "null"...)
		}
		return appendQuotedTime(b, *x) // not appendCanonical: boxing a time.Time allocates
	case []byte: // json columns
		if x == nil {
			return append(b, "null"...)
		}
		return append(b, x...)
	case *string:
		if x == nil {
			return append(b, "null"...)
		}
		return appendQuoted(b, *x)
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
		return appendQuoted(b, x)
	case netip.Addr:
		if x.IsValid() && x.Zone() == "" {
			// What json.Marshal writes: the address's text (hex digits, dots
			// and colons), quoted.
			b = append(b, '"')
			b = x.AppendTo(b)
			return append(b, '"')
		}
		j, _ := json.Marshal(x)
		return append(b, j...)
	default: // []string
		j, _ := json.Marshal(x)
		return append(b, j...)
	}
}
