package rollup

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// retainSQL applies one tier's retention and, for raw ranges, records each
// dropped range with the seal chain's head in apigee.audit_retained, in the
// same statement, so a range is never gone without the record that tells
// verify its batches' rows left through retention, not tampering. (The CTE
// is referenced twice, so PostgreSQL runs apply_retention once.)
const retainSQL = `
WITH r AS (
	SELECT relation, range_from, range_to, outcome FROM apigee.apply_retention($1::text, $2::interval)
), recorded AS (
	INSERT INTO apigee.audit_retained (relation, range_from, range_to, head_batch_id, head_seal)
	SELECT r.relation, r.range_from, r.range_to, h.batch_id, h.seal
	FROM r LEFT JOIN LATERAL (SELECT batch_id, seal FROM apigee.audit_seals ORDER BY batch_id DESC LIMIT 1) h ON true
	WHERE r.outcome = 'dropped' AND $1::text = 'raw'
)
SELECT relation, range_from, range_to, outcome FROM r`

// retain applies each tier's retention through apigee.apply_retention,
// the owner's SECURITY DEFINER function (drop_chunks on TimescaleDB, detach
// and drop of whole partitions on PostgreSQL; never row deletes on raw
// tables), then deletes anomalies older than the hourly rollups.
func (r *Runner) retain(ctx context.Context, conn *pgx.Conn, s *Summary) error {
	tiers := []struct {
		tier string
		keep time.Duration
	}{
		{"raw", r.cfg.RawRetention},
		{"rejects", r.cfg.RejectsRetention},
		{"1m", r.cfg.Rollup1mRetention},
		{"1h", r.cfg.Rollup1hRetention},
	}
	for _, t := range tiers {
		if t.keep == Off {
			continue
		}
		rows, err := conn.Query(ctx, retainSQL, t.tier, interval(t.keep))
		if err != nil {
			return fmt.Errorf("%s: %w", t.tier, err)
		}
		var rel, outcome string
		var from, to time.Time
		_, err = pgx.ForEachRow(rows, []any{&rel, &from, &to, &outcome}, func() error {
			switch outcome {
			case "dropped":
				s.ChunksDropped++
				s.Dropped = append(s.Dropped, rel)
			default:
				s.Held = append(s.Held, fmt.Sprintf("%s [%s, %s) %s", rel, from.UTC().Format(time.RFC3339), to.UTC().Format(time.RFC3339), outcome))
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", t.tier, err)
		}
	}
	if r.cfg.Rollup1hRetention != Off {
		if _, err := conn.Exec(ctx, "DELETE FROM apigee.anomalies WHERE bucket_start < $1", r.now().Add(-r.cfg.Rollup1hRetention)); err != nil {
			return fmt.Errorf("anomalies: %w", err)
		}
	}
	return nil
}
