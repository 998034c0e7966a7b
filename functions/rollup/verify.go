package rollup

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/shared/audit"
)

// verify runs shared/audit's verifier for at most VerifyBudget, continuing
// from the batch the previous run reached (apigee.rollup_state.
// verified_through) and starting over once it has checked the last batch,
// so a large database is covered over several runs. Damage fails the run
// (status 500, logged as an error) with the batch and the kind.
func (r *Runner) verify(ctx context.Context, conn *pgx.Conn, s *Summary) error {
	if r.cfg.VerifyBudget == 0 {
		return nil
	}
	var from int64
	if err := conn.QueryRow(ctx, "SELECT verified_through FROM apigee.rollup_state").Scan(&from); err != nil {
		return fmt.Errorf("read cursor: %w", err)
	}
	rep, err := audit.Verify(ctx, conn, audit.Options{From: from, Deadline: time.Now().Add(r.cfg.VerifyBudget)})
	if err != nil {
		return err
	}
	s.Verify = &rep
	if rep.Problem != nil {
		return &audit.TamperedError{Problem: *rep.Problem}
	}
	// Continue from the last sealed batch checked: the next run trusts its
	// seal, which this run recomputed.
	next := from
	if rep.HeadBatch > 0 {
		next = rep.HeadBatch
	}
	if rep.Done {
		next = 0
	}
	if _, err := conn.Exec(ctx, "UPDATE apigee.rollup_state SET verified_through = $1", next); err != nil {
		return fmt.Errorf("save cursor: %w", err)
	}
	return nil
}
