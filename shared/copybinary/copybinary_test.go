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

// TestParamsMatchPgx: each parameter Params holds is the bytes pgx's
// binary codecs send for the same value, and a NULL parameter is nil.
// Arrays here have no NULL elements: pgx sets array_send's has-nulls flag
// for them, Params leaves it 0, which array_recv accepts (it finds NULL
// elements by their -1 length; the flag is only checked to be 0 or 1).
func TestParamsMatchPgx(t *testing.T) {
	m := pgtype.NewMap()
	at := time.Date(2026, 12, 4, 2, 30, 0, 123456000, time.UTC)
	var p Params
	for round := range 2 { // the second round reuses the buffer
		p.Reset()
		p.Value(func(w *Writer) { w.Int64(-42) })
		p.Null()
		p.Value(func(w *Writer) { w.Timestamptz(at) })
		p.Value(func(w *Writer) { w.Bytea([]byte{0, 1, 0xff}) })
		p.Array(OIDInt4, 3, func(w *Writer) { w.Int32(1); w.Int32(-2); w.Int32(math.MaxInt32) })
		p.Array(OIDText, 2, func(w *Writer) { w.Text("é"); w.Text("") })
		p.Value(func(w *Writer) { w.Int32(int32(round)) })
		want := []struct {
			oid   uint32
			value any
		}{
			{pgtype.Int8OID, int64(-42)},
			{0, nil},
			{pgtype.TimestamptzOID, at},
			{pgtype.ByteaOID, []byte{0, 1, 0xff}},
			{pgtype.Int4ArrayOID, []int32{1, -2, math.MaxInt32}},
			{pgtype.TextArrayOID, []string{"é", ""}},
			{pgtype.Int4OID, int32(round)},
		}
		got := p.Values()
		if len(got) != len(want) {
			t.Fatalf("round %d: %d parameters, want %d", round, len(got), len(want))
		}
		for i, w := range want {
			if w.value == nil {
				if got[i] != nil {
					t.Errorf("round %d, parameter %d: %x, want NULL (nil)", round, i, got[i])
				}
				continue
			}
			b, err := m.Encode(w.oid, pgtype.BinaryFormatCode, w.value, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[i], b) {
				t.Errorf("round %d, parameter %d (%T): got  %x\nwant %x", round, i, w.value, got[i], b)
			}
		}
	}
}
