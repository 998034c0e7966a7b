package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"math"
	"time"
)

// Batch is what a seal covers of one apigee.ingest_batches row.
type Batch struct {
	ID                                       int64
	Inserted, Duplicates, Rejected, Messages int64
	// MinReceived and MaxReceived are nil when the batch inserted no row.
	MinReceived, MaxReceived *time.Time
	RowsSHA256               []byte
}

// nullTimeMicros stands for a NULL time range bound in the seal encoding.
const nullTimeMicros = math.MinInt64

// Seal returns seal(n) = SHA-256(seal(n−1) ‖ batch n), where seal(n−1) is
// prev (32 zero bytes before the first batch) and batch n is encoded as
// fixed-width big-endian fields: id, rows_inserted, rows_duplicate,
// rows_rejected, messages (8 bytes each), min_received_at and
// max_received_at (8 bytes each: signed microseconds since the Unix epoch,
// the smallest int64 for NULL), then a 4-byte length and rows_sha256. The
// chain links batches in batch-id order; ids a rolled-back transaction
// took from the sequence never appear in it.
func Seal(prev [32]byte, b Batch) [32]byte {
	buf := make([]byte, 0, 32+7*8+4+len(b.RowsSHA256))
	buf = append(buf, prev[:]...)
	for _, n := range []int64{b.ID, b.Inserted, b.Duplicates, b.Rejected, b.Messages, micros(b.MinReceived), micros(b.MaxReceived)} {
		buf = binary.BigEndian.AppendUint64(buf, uint64(n))
	}
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(b.RowsSHA256)))
	buf = append(buf, b.RowsSHA256...)
	return sha256.Sum256(buf)
}

func micros(t *time.Time) int64 {
	if t == nil {
		return nullTimeMicros
	}
	return t.UnixMicro()
}
