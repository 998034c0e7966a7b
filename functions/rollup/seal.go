package rollup

import (
	"context"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/shared/audit"
)

// defaultSealWait is how long a run waits for the ingest transactions that may
// still commit a batch below the sealing horizon; after it, the run seals
// nothing new and the next run tries again.
const defaultSealWait = 5 * time.Second

// sealPage is how many batches one sealing transaction appends.
const sealPage = 5000

// SealHead is the seal chain's head after a run, logged with the summary so
// that a copy lives outside the database.
type SealHead struct {
	BatchID int64  `json:"batch_id"`
	Seal    string `json:"seal"`
}

// seal appends the seals of committed batches to apigee.audit_seals in
// batch-id order.
//
// Ingest takes a batch id from the sequence at the start of its
// transaction and commits later, so batches commit out of id order: batch
// 10 may still be running when batch 11 is visible, and sealing 11 first
// would leave 10 outside the chain. The run therefore seals only up to a
// horizon below which no batch can appear any more. It reads the highest
// id the sequence has handed out (H), then lists the virtual transaction
// ids of every transaction then in progress that may insert batch rows,
// and waits until each has ended, as CREATE INDEX CONCURRENTLY waits for
// older transactions. Every id ≤ H went to a transaction that called
// nextval before H was read: it was either over already or on that list,
// so once the list has ended, each such batch is committed (and visible to
// the next statement) or rolled back for good. A transaction starting
// later takes an id > H. (That needs the sequence's CACHE 1, as migration
// 00002 creates it: with a larger cache a session could hand out, later,
// an id ≤ H it had reserved before.) Only one run seals at a time (the run's advisory
// lock), and the primary key on batch_id and the unique prev_batch_id
// refuse a second seal for a batch or a fork of the chain.
func (r *Runner) seal(ctx context.Context, conn *pgx.Conn, s *Summary) error {
	var horizon int64
	if err := conn.QueryRow(ctx, "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM apigee.ingest_batch_id_seq").Scan(&horizon); err != nil {
		return fmt.Errorf("read batch sequence: %w", err)
	}
	ok, err := waitForWriters(ctx, conn, r.sealWait)
	if err != nil {
		return err
	}
	if !ok {
		s.SealWaiting = true
		return nil
	}
	head, headSeal, err := chainHead(ctx, conn)
	if err != nil {
		return err
	}
	for {
		n, err := sealPageAfter(ctx, conn, horizon, &head, &headSeal)
		if err != nil {
			return err
		}
		s.BatchesSealed += n
		if n < sealPage {
			break
		}
	}
	if head != nil {
		s.SealHead = &SealHead{BatchID: *head, Seal: hex.EncodeToString(headSeal[:])}
	}
	return nil
}

// writersSQL lists the transactions of this database's sessions whose role
// may insert batch rows. Background workers have no role and drop out;
// pg_stat_activity shows other roles' pid, database and role (but not,
// say, backend_type) to the rollup.
const writersSQL = `
SELECT l.virtualxid
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'virtualxid' AND l.granted AND l.mode = 'ExclusiveLock'
  AND l.pid <> pg_backend_pid()
  AND a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND has_table_privilege(a.usesysid, 'apigee.ingest_batches', 'INSERT')`

// waitForWriters waits up to wait for the transactions in progress now
// to end; false means some were still running.
func waitForWriters(ctx context.Context, conn *pgx.Conn, wait time.Duration) (bool, error) {
	rows, err := conn.Query(ctx, writersSQL)
	if err != nil {
		return false, fmt.Errorf("list ingest transactions: %w", err)
	}
	vxids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return false, fmt.Errorf("list ingest transactions: %w", err)
	}
	deadline := time.Now().Add(wait)
	for len(vxids) > 0 {
		var left int
		err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'virtualxid' AND granted AND virtualxid = ANY($1)", vxids).Scan(&left)
		if err != nil {
			return false, fmt.Errorf("wait for ingest transactions: %w", err)
		}
		if left == 0 {
			return true, nil
		}
		if !time.Now().Before(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return true, nil
}

func chainHead(ctx context.Context, conn *pgx.Conn) (*int64, [32]byte, error) {
	var id int64
	var seal []byte
	var out [32]byte
	err := conn.QueryRow(ctx, "SELECT batch_id, seal FROM apigee.audit_seals ORDER BY batch_id DESC LIMIT 1").Scan(&id, &seal)
	if err == pgx.ErrNoRows {
		return nil, out, nil
	}
	if err != nil {
		return nil, out, fmt.Errorf("read chain head: %w", err)
	}
	copy(out[:], seal)
	return &id, out, nil
}

// sealPageAfter seals up to sealPage batches after *head and at most
// horizon, in one transaction, and advances *head.
func sealPageAfter(ctx context.Context, conn *pgx.Conn, horizon int64, head **int64, headSeal *[32]byte) (int, error) {
	after := int64(0)
	if *head != nil {
		after = **head
	}
	rows, err := conn.Query(ctx, `
		SELECT batch_id, rows_inserted, rows_duplicate, rows_rejected, messages, min_received_at, max_received_at, rows_sha256
		FROM apigee.ingest_batches WHERE batch_id > $1 AND batch_id <= $2 ORDER BY batch_id LIMIT $3`, after, horizon, sealPage)
	if err != nil {
		return 0, fmt.Errorf("read batches: %w", err)
	}
	var ids []int64
	var prevs []*int64
	var seals [][]byte
	var b audit.Batch
	prevID, prev := *head, *headSeal
	_, err = pgx.ForEachRow(rows, []any{&b.ID, &b.Inserted, &b.Duplicates, &b.Rejected, &b.Messages, &b.MinReceived, &b.MaxReceived, &b.RowsSHA256}, func() error {
		prev = audit.Seal(prev, b)
		ids, prevs, seals = append(ids, b.ID), append(prevs, prevID), append(seals, append([]byte(nil), prev[:]...))
		id := b.ID
		prevID = &id
		b = audit.Batch{}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read batches: %w", err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	if _, err := conn.Exec(ctx, `
		INSERT INTO apigee.audit_seals (batch_id, prev_batch_id, seal)
		SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])`, ids, prevs, seals); err != nil {
		return 0, fmt.Errorf("append seals: %w", err)
	}
	*head, *headSeal = prevID, prev
	return len(ids), nil
}
