package copybinary

import (
	"bytes"
	"encoding/binary"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// TestFieldsMatchPgx: every field the Writer writes is the length and the
// bytes pgx's binary codecs send for the same value (pgx's codecs follow
// PostgreSQL's *_send functions and are what ingest used before).
func TestFieldsMatchPgx(t *testing.T) {
	m := pgtype.NewMap()
	at := time.Date(2026, 12, 2, 16, 42, 7, 123456789, time.UTC)
	for _, tc := range []struct {
		name  string
		oid   uint32
		value any
		write func(*Writer)
	}{
		{"bool true", pgtype.BoolOID, true, func(w *Writer) { w.Bool(true) }},
		{"bool false", pgtype.BoolOID, false, func(w *Writer) { w.Bool(false) }},
		{"int2", pgtype.Int2OID, int16(-404), func(w *Writer) { w.Int16(-404) }},
		{"int4", pgtype.Int4OID, int32(math.MaxInt32), func(w *Writer) { w.Int32(math.MaxInt32) }},
		{"int8", pgtype.Int8OID, int64(math.MinInt64), func(w *Writer) { w.Int64(math.MinInt64) }},
		{"timestamptz", pgtype.TimestamptzOID, at, func(w *Writer) { w.Timestamptz(at) }},
		{"timestamptz before 2000", pgtype.TimestamptzOID, time.Unix(-1, 999), func(w *Writer) { w.Timestamptz(time.Unix(-1, 999)) }},
		{"timestamptz in a zone", pgtype.TimestamptzOID, at.In(time.FixedZone("x", -3600)), func(w *Writer) { w.Timestamptz(at.In(time.FixedZone("x", -3600))) }},
		{"text", pgtype.TextOID, "héllo \x01", func(w *Writer) { w.Text("héllo \x01") }},
		{"empty text", pgtype.TextOID, "", func(w *Writer) { w.Text("") }},
		{"jsonb", pgtype.JSONBOID, []byte(`{"a":[1,"é"]}`), func(w *Writer) { w.JSONB([]byte(`{"a":[1,"é"]}`)) }},
		{"inet v4", pgtype.InetOID, netip.MustParseAddr("203.0.113.7"), func(w *Writer) { w.Inet(netip.MustParseAddr("203.0.113.7")) }},
		{"inet v6", pgtype.InetOID, netip.MustParseAddr("2001:db8::1"), func(w *Writer) { w.Inet(netip.MustParseAddr("2001:db8::1")) }},
		{"inet v4-mapped", pgtype.InetOID, netip.MustParseAddr("::ffff:1.2.3.4"), func(w *Writer) { w.Inet(netip.MustParseAddr("::ffff:1.2.3.4")) }},
		{"text[]", pgtype.TextArrayOID, []string{"read", `wr"ite`, "", "a,b"}, func(w *Writer) { w.TextArray([]string{"read", `wr"ite`, "", "a,b"}) }},
		{"int4[]", pgtype.Int4ArrayOID, []int32{1, -2}, func(w *Writer) {
			w.ArrayHeader(OIDInt4, 2, 2*8)
			w.Int32(1)
			w.Int32(-2)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := m.Encode(tc.oid, pgtype.BinaryFormatCode, tc.value, nil)
			if err != nil {
				t.Fatal(err)
			}
			want = append(binary.BigEndian.AppendUint32(nil, uint32(len(want))), want...)
			var w Writer
			w.Reset(nil)
			header := w.Len()
			tc.write(&w)
			if got := w.b[header:]; !bytes.Equal(got, want) {
				t.Errorf("got  %x\nwant %x", got, want)
			}
		})
	}
}

// TestEmptyArray: an empty array is written as PostgreSQL's array_send
// writes one, with no dimensions (pgx sends one dimension of length 0,
// which array_recv also reads as empty).
func TestEmptyArray(t *testing.T) {
	var w Writer
	w.Reset(nil)
	header := w.Len()
	w.TextArray(nil)
	want := []byte{0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, OIDText}
	if got := w.b[header:]; !bytes.Equal(got, want) {
		t.Errorf("got  %x\nwant %x", got, want)
	}
}

// TestStream: a stream is the signature, flags and extension length, its
// tuples, and the -1 trailer; Reset starts over in the buffer it is given.
func TestStream(t *testing.T) {
	var w Writer
	w.Reset(make([]byte, 0, 64))
	w.Tuple(2)
	w.Null()
	w.Int16(7)
	got := w.Finish()
	want := []byte("PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00" + "\x00\x02" + "\xff\xff\xff\xff" + "\x00\x00\x00\x02\x00\x07" + "\xff\xff")
	if !bytes.Equal(got, want) {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	w.Reset(got)
	if w.Len() != 19 {
		t.Errorf("after Reset: %d bytes, want the 19 of the header", w.Len())
	}
}
