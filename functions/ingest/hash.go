package ingest

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"strconv"
	"time"
)

// HashCalls returns the SHA-256 of a batch's inserted rows, the base of
// tamper evidence: apigee.ingest_batches keeps it, and anyone can recompute
// it later from the rows WHERE batch_id = id.
//
// The encoding is one bracketed, comma-separated list per row, in
// stageColumns order (the field table's columns by ordinal, then the
// message's), rows sorted by (message_id, received_at), each row
// followed by "\n", the whole prefixed by the batch id as 8 big-endian
// bytes. Values: strings and timestamps quoted as Go's strconv.Quote does
// (fast, and unambiguous), timestamps as RFC 3339 UTC with microseconds,
// NULL as null, numbers and booleans bare, inet and text[] as JSON strings
// and arrays, json columns as Go's encoding/json writes a map (compact, keys
// sorted). calls must already be in that order.
func HashCalls(batchID int64, calls []Call) [32]byte {
	h := sha256.New()
	var id [8]byte
	binary.BigEndian.PutUint64(id[:], uint64(batchID))
	h.Write(id[:])
	rows := &callRows{calls: calls, batchID: batchID}
	buf := make([]byte, 0, 1024)
	for rows.Next() {
		vals, _ := rows.Values()
		buf = append(buf[:0], '[')
		for i, v := range vals {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendCanonical(buf, v)
		}
		buf = append(buf, ']', '\n')
		h.Write(buf)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
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

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }
