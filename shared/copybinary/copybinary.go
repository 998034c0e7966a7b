// Package copybinary writes COPY … FROM STDIN (FORMAT binary) streams, as
// PostgreSQL's COPY reference documents them under "Binary Format"
// (https://www.postgresql.org/docs/current/sql-copy.html): a signature and
// header, then per tuple a 16-bit field count and per field a 32-bit length
// (-1 for NULL) and the value in its type's binary send format, then a -1
// trailer. The values' formats are those of the types' *_send functions in
// PostgreSQL's source, which pgx's pgtype codecs also follow.
//
// It exists instead of pgx's CopyFrom because both functions copy many rows
// of a few dozen values each: boxing every value in an interface, finding
// its encode plan and allocating on the way cost more than the database's
// side of the COPY (the rollup benchmark's profile; for ingest, the
// callgrind counts in the README).
package copybinary

import (
	"encoding/binary"
	"math"
	"net/netip"
	"time"
)

// OIDs of the element types that arrays here carry (pg_type.dat).
const (
	OIDBool        = 16
	OIDInt8        = 20
	OIDInt2        = 21
	OIDInt4        = 23
	OIDText        = 25
	OIDTimestamptz = 1184
)

// Writer appends one stream to a buffer. The zero Writer is not a stream:
// call Reset first.
type Writer struct{ b []byte }

// Reset starts a new stream in buf (nil: a new buffer). A stream handed
// out by Finish must not be passed back while it is still being sent.
func (w *Writer) Reset(buf []byte) {
	w.b = append(buf[:0], "PGCOPY\n\xff\r\n\x00"...)
	w.b = binary.BigEndian.AppendUint32(w.b, 0) // flags
	w.b = binary.BigEndian.AppendUint32(w.b, 0) // header extension length
}

// Len is the stream's size so far in bytes.
func (w *Writer) Len() int { return len(w.b) }

// Finish appends the trailer and returns the stream.
func (w *Writer) Finish() []byte {
	w.b = binary.BigEndian.AppendUint16(w.b, math.MaxUint16) // -1
	return w.b
}

// Tuple starts a row of fields values.
func (w *Writer) Tuple(fields int) { w.b = binary.BigEndian.AppendUint16(w.b, uint16(fields)) }

// Null is a NULL field.
func (w *Writer) Null() { w.b = binary.BigEndian.AppendUint32(w.b, math.MaxUint32) } // -1

// Bool is boolean (boolsend: one byte).
func (w *Writer) Bool(v bool) {
	w.b = binary.BigEndian.AppendUint32(w.b, 1)
	if v {
		w.b = append(w.b, 1)
	} else {
		w.b = append(w.b, 0)
	}
}

// Int16 is smallint.
func (w *Writer) Int16(v int16) {
	w.b = binary.BigEndian.AppendUint32(w.b, 2)
	w.b = binary.BigEndian.AppendUint16(w.b, uint16(v))
}

// Int32 is integer.
func (w *Writer) Int32(v int32) {
	w.b = binary.BigEndian.AppendUint32(w.b, 4)
	w.b = binary.BigEndian.AppendUint32(w.b, uint32(v))
}

// Int64 is bigint.
func (w *Writer) Int64(v int64) {
	w.b = binary.BigEndian.AppendUint32(w.b, 8)
	w.b = binary.BigEndian.AppendUint64(w.b, uint64(v))
}

// y2kMicros is 2000-01-01 00:00 UTC, where PostgreSQL's binary timestamps
// count from, in microseconds since the Unix epoch.
const y2kMicros = 946_684_800_000_000

// Timestamptz is timestamptz (timestamptz_send: microseconds since
// 2000-01-01 UTC), t's sub-microsecond part dropped as pgx drops it.
func (w *Writer) Timestamptz(t time.Time) {
	w.Int64(t.Unix()*1_000_000 + int64(t.Nanosecond())/1000 - y2kMicros)
}

// Text is text or varchar (textsend: the bytes as they are; the server
// checks they are valid in its encoding).
func (w *Writer) Text(s string) {
	w.b = binary.BigEndian.AppendUint32(w.b, uint32(len(s)))
	w.b = append(w.b, s...)
}

// JSONB is jsonb (jsonb_send: a version byte, 1, then the JSON text).
func (w *Writer) JSONB(j []byte) {
	w.b = binary.BigEndian.AppendUint32(w.b, uint32(1+len(j)))
	w.b = append(w.b, 1)
	w.b = append(w.b, j...)
}

// Inet is a host address as inet (inet_send: family, netmask bits, is_cidr,
// address length, address); an IPv4-mapped IPv6 address stays IPv6, as pgx
// sends it. a must be valid and have no zone.
func (w *Writer) Inet(a netip.Addr) {
	const afInet, afInet6 = 2, 3 // PGSQL_AF_INET, PGSQL_AF_INET6 in utils/inet.h
	if a.Is4() {
		v := a.As4()
		w.b = binary.BigEndian.AppendUint32(w.b, 8)
		w.b = append(w.b, afInet, 32, 0, 4)
		w.b = append(w.b, v[:]...)
		return
	}
	v := a.As16()
	w.b = binary.BigEndian.AppendUint32(w.b, 20)
	w.b = append(w.b, afInet6, 128, 0, 16)
	w.b = append(w.b, v[:]...)
}

// Bytea is bytea (byteasend: the bytes as they are).
func (w *Writer) Bytea(v []byte) {
	w.b = binary.BigEndian.AppendUint32(w.b, uint32(len(v)))
	w.b = append(w.b, v...)
}

// TextArray is a one-dimensional text[] without NULLs.
func (w *Writer) TextArray(s []string) {
	size := 0
	for _, e := range s {
		size += 4 + len(e)
	}
	w.ArrayHeader(OIDText, len(s), size)
	for _, e := range s {
		w.Text(e)
	}
}

// ArrayHeader is a one-dimensional array's header (array_send): the
// number of dimensions, a has-nulls flag, the element type, and the
// length and lower bound of the dimension; an empty array has no
// dimensions. elemsSize is what the n elements that follow take, each
// written as a field is (length and value).
func (w *Writer) ArrayHeader(elemOID uint32, n, elemsSize int) {
	size := 12
	if n > 0 {
		size += 8 + elemsSize
	}
	w.b = binary.BigEndian.AppendUint32(w.b, uint32(size))
	w.arrayStart(elemOID, n)
}

// arrayStart is ArrayHeader without the field's length.
func (w *Writer) arrayStart(elemOID uint32, n int) {
	ndim := uint32(0)
	if n > 0 {
		ndim = 1
	}
	w.b = binary.BigEndian.AppendUint32(w.b, ndim)
	w.b = binary.BigEndian.AppendUint32(w.b, 0)
	w.b = binary.BigEndian.AppendUint32(w.b, elemOID)
	if n > 0 {
		w.b = binary.BigEndian.AppendUint32(w.b, uint32(n))
		w.b = binary.BigEndian.AppendUint32(w.b, 1)
	}
}

// Params encodes one statement's parameters in binary format, for
// pgconn's ExecPrepared with format code 1: each parameter is the bytes
// of its type's send function, which is what a COPY field holds after its
// length (the protocol's Bind message carries the length instead). They
// share one buffer, which Reset keeps for the next statement.
type Params struct {
	w     Writer
	spans [][2]int // each parameter's bytes in w.b; {-1, -1} for NULL
	out   [][]byte
}

// Reset forgets the parameters, keeping the buffer.
func (p *Params) Reset() {
	p.w.b = p.w.b[:0]
	p.spans = p.spans[:0]
}

// Null adds a NULL parameter.
func (p *Params) Null() { p.spans = append(p.spans, [2]int{-1, -1}) }

// Value adds the parameter that write writes as a field (w.Int64, for
// one): its bytes after the length.
func (p *Params) Value(write func(w *Writer)) {
	start := len(p.w.b) + 4
	write(&p.w)
	p.spans = append(p.spans, [2]int{start, len(p.w.b)})
}

// Array adds a one-dimensional array parameter of n elements of type
// elemOID, which elems writes as fields (w.Null for a NULL element).
func (p *Params) Array(elemOID uint32, n int, elems func(w *Writer)) {
	start := len(p.w.b)
	p.w.arrayStart(elemOID, n)
	elems(&p.w)
	p.spans = append(p.spans, [2]int{start, len(p.w.b)})
}

// Values returns the parameters added since Reset, in order (nil for
// NULL). They point into p's buffer: valid until the next Reset.
func (p *Params) Values() [][]byte {
	p.out = p.out[:0]
	for _, s := range p.spans {
		if s[0] < 0 {
			p.out = append(p.out, nil)
			continue
		}
		p.out = append(p.out, p.w.b[s[0]:s[1]:s[1]])
	}
	return p.out
}
