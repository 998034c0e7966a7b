package rollup

import (
	"encoding/binary"
	"math"
	"time"
)

// copyBinary builds a COPY … FROM STDIN (FORMAT binary) stream, as
// documented in PostgreSQL's COPY reference, "Binary Format": a signature
// and header, then per tuple a 16-bit field count and per field a 32-bit
// length (-1 for NULL) and the value in the type's binary send format,
// then a -1 trailer. Written by hand instead of pgx's CopyFrom because the
// refresh stages hundreds of thousands of rows of 29 values: boxing each in
// an interface and looking up its encode plan cost more than the database's
// side of the COPY (measured by the rollup benchmark's profile).
type copyBinary struct{ b []byte }

const (
	oidInt4 = 23
	oidInt8 = 20
)

// reset starts a new stream, keeping the buffer: one refresh sends
// dozens of streams of megabytes each.
func (c *copyBinary) reset() {
	c.b = append(c.b[:0], "PGCOPY\n\xff\r\n\x00"...)
	c.b = binary.BigEndian.AppendUint32(c.b, 0) // flags
	c.b = binary.BigEndian.AppendUint32(c.b, 0) // header extension length
}

// finish appends the trailer and returns the stream.
func (c *copyBinary) finish() []byte {
	return binary.BigEndian.AppendUint16(c.b, math.MaxUint16) // -1
}

func (c *copyBinary) tuple(fields int) { c.b = binary.BigEndian.AppendUint16(c.b, uint16(fields)) }

func (c *copyBinary) null() { c.b = binary.BigEndian.AppendUint32(c.b, math.MaxUint32) } // -1

func (c *copyBinary) int16(v int16) {
	c.b = binary.BigEndian.AppendUint32(c.b, 2)
	c.b = binary.BigEndian.AppendUint16(c.b, uint16(v))
}

func (c *copyBinary) int32(v int32) {
	c.b = binary.BigEndian.AppendUint32(c.b, 4)
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(v))
}

func (c *copyBinary) int64(v int64) {
	c.b = binary.BigEndian.AppendUint32(c.b, 8)
	c.b = binary.BigEndian.AppendUint64(c.b, uint64(v))
}

// timestamptz is microseconds since 2000-01-01 00:00 UTC.
func (c *copyBinary) timestamptz(t time.Time) { c.int64(t.Sub(pgEpoch).Microseconds()) }

func (c *copyBinary) text(s string) {
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(len(s)))
	c.b = append(c.b, s...)
}

// arrayHeader is a one-dimensional array's header (array_send): the
// number of dimensions, a has-nulls flag, the element type, and the
// length and lower bound of the dimension; an empty array has no
// dimensions. Each element follows as a field would (int32, int64).
func (c *copyBinary) arrayHeader(elemOID uint32, n, elemSize int) {
	size := 12
	if n > 0 {
		size += 8 + n*(4+elemSize)
	}
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(size))
	ndim := uint32(0)
	if n > 0 {
		ndim = 1
	}
	c.b = binary.BigEndian.AppendUint32(c.b, ndim)
	c.b = binary.BigEndian.AppendUint32(c.b, 0)
	c.b = binary.BigEndian.AppendUint32(c.b, elemOID)
	if n > 0 {
		c.b = binary.BigEndian.AppendUint32(c.b, uint32(n))
		c.b = binary.BigEndian.AppendUint32(c.b, 1)
	}
}
