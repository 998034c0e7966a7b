// Package rollup keeps the minute and hour rollups of apigee.api_calls,
// applies tiered retention and flags anomalies: the work continuous
// aggregates and retention policies would do, done without any TSL-only
// TimescaleDB feature so it runs the same on the Apache edition and on
// plain PostgreSQL (Cloud SQL).
//
// Rollups are incremental. Ingest records every (batch, minute) it wrote
// into in apigee.rollup_invalidations, in the same transaction as the rows;
// a run consumes those rows, recomputes exactly those minutes and their
// hours from the raw rows (one sort per run of hours, recompute.go),
// replacing what was there. A
// recompute replaces rather than adds, so re-runs and redelivered messages
// never double-count, and late rows for an old minute correct that minute
// and its hour.
//
// One run works at a time (a session advisory lock); a concurrent run
// returns at once with Status "skipped". Each run has a time budget and the
// next run continues where it stopped.
//
// The schema (rollup tables, the latency histogram type and its functions,
// views, anomalies, the retention function) is in migrations 00010–00014
// and 00018.
// Config documents every setting and its default. The benchmark:
//
//	go test -run '^$' -bench BenchmarkRollup -benchtime 1x -timeout 30m ./functions/rollup/
package rollup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/shared/audit"
)

// LockKey is the advisory lock (per database) held by a working run.
const LockKey int64 = 0x61706967_726f6c6c // "apigroll"

// DB hands out connections; *pgxpool.Pool and *dbconn.DB satisfy it. A run
// holds one connection throughout, since the advisory lock is per session.
type DB interface {
	Acquire(ctx context.Context) (*pgxpool.Conn, error)
}

// Runner performs rollup runs against one database.
type Runner struct {
	db  DB
	cfg Config
	pub Publisher
	// now is the clock anomaly windows and partitions are placed by.
	now func() time.Time
	// sealWait bounds the wait for ingest transactions before sealing.
	sealWait time.Duration
	// batch, when set, is the reduced refresh batch size (see shrink).
	batch atomic.Int64
}

// NewRunner returns a Runner. pub may be nil: anomalies are then recorded
// but not published.
func NewRunner(db DB, cfg Config, pub Publisher) *Runner {
	return &Runner{db: db, cfg: cfg, pub: pub, now: time.Now, sealWait: defaultSealWait}
}

// Summary is what one run did; it is the function's JSON answer.
type Summary struct {
	// Status is "ok", "skipped" (another run holds the lock) or "error".
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	// MinutesRefreshed and HoursRefreshed count recomputed buckets.
	MinutesRefreshed int `json:"minutes_refreshed"`
	HoursRefreshed   int `json:"hours_refreshed"`
	// RefreshBatches counts the refresh transactions that recomputed them.
	RefreshBatches int `json:"refresh_batches"`
	// RowsRead counts the raw rows aggregated into the refreshed minutes'
	// rows (a late minute's hour reads its other minutes' rows too).
	RowsRead int64 `json:"rows_read"`
	// RollupRowsWritten counts minute and hour rows written.
	RollupRowsWritten int64 `json:"rollup_rows_written"`
	// InvalidationsConsumed counts apigee.rollup_invalidations rows
	// consumed; InvalidationsDiscarded those dropped unprocessed because
	// their raw rows are already gone (late data behind retention).
	InvalidationsConsumed  int64 `json:"invalidations_consumed"`
	InvalidationsDiscarded int64 `json:"invalidations_discarded"`
	// PendingMinutes is how many invalidated minutes remain for later runs.
	PendingMinutes int64 `json:"pending_minutes"`
	// BudgetExhausted says the refresh stopped at RUN_BUDGET with work left.
	BudgetExhausted bool `json:"budget_exhausted"`
	// BatchMinutes is the most minutes a refresh batch may take:
	// REFRESH_BATCH_MINUTES, or less after a batch hit the statement
	// timeout.
	BatchMinutes      int `json:"batch_minutes"`
	PartitionsCreated int `json:"partitions_created"`
	// ChunksDropped counts chunks or partitions dropped by retention, listed
	// in Dropped; Held lists the ranges retention kept back (pending
	// rollups or a busy lock).
	ChunksDropped int      `json:"chunks_dropped"`
	Dropped       []string `json:"dropped,omitempty"`
	Held          []string `json:"held,omitempty"`
	// BatchesSealed counts batches appended to the seal chain, SealHead is
	// the chain's head after the run (none before the first batch), and
	// SealWaiting says sealing waited for ingest transactions in vain and
	// sealed nothing (the next run tries again).
	BatchesSealed int       `json:"batches_sealed"`
	SealHead      *SealHead `json:"seal_head,omitempty"`
	SealWaiting   bool      `json:"seal_waiting,omitempty"`
	// Verify is what the budgeted verify checked (VERIFY_BUDGET).
	Verify *audit.Report `json:"verify,omitempty"`
	// AnomaliesFound counts new anomalies; AlertsPublished alerts sent.
	AnomaliesFound  int    `json:"anomalies_found"`
	AlertsPublished int    `json:"alerts_published"`
	DurationMS      int64  `json:"duration_ms"`
	Error           string `json:"error,omitempty"`
}

// Run performs one run: maintenance (chunk hardening, partitions ahead),
// sealing committed batches (seal.go), the incremental refresh within the time budget, retention, and anomaly
// detection with alerts, and a budgeted verify (verify.go). Steps after a failed one still run; the error
// joins every failure and the summary says what was done.
func (r *Runner) Run(ctx context.Context) (Summary, error) {
	// Budget and duration use the wall clock; r.now only places the data
	// (anomaly windows, partitions), so tests can pin it.
	start := time.Now()
	s := Summary{Status: "ok"}

	pc, err := r.db.Acquire(ctx)
	if err != nil {
		return r.fail(&s, start, fmt.Errorf("rollup: acquire connection: %w", err))
	}
	// Until the lock query answers, the session may hold the lock (the
	// answer can be lost after the server granted it).
	locked := true
	defer func() {
		if locked {
			release(pc)
			return
		}
		pc.Release()
	}()
	conn := pc.Conn()
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", LockKey).Scan(&locked); err != nil {
		locked = true
		return r.fail(&s, start, fmt.Errorf("rollup: advisory lock: %w", err))
	}
	if !locked {
		s.Status = "skipped"
		s.Reason = "another run holds the rollup lock"
		s.DurationMS = time.Since(start).Milliseconds()
		return s, nil
	}

	var errs []error
	step := func(name string, fn func() error) {
		if ctx.Err() != nil {
			errs = append(errs, fmt.Errorf("rollup: %s: %w", name, ctx.Err()))
			return
		}
		if err := fn(); err != nil {
			errs = append(errs, fmt.Errorf("rollup: %s: %w", name, err))
		}
	}
	var storage string
	step("maintenance", func() error {
		var err error
		storage, err = r.maintain(ctx, conn, &s)
		return err
	})
	step("seal", func() error { return r.seal(ctx, conn, &s) })
	step("refresh", func() error { return r.refresh(ctx, conn, storage, start.Add(r.cfg.RunBudget), &s) })
	step("retention", func() error { return r.retain(ctx, conn, &s) })
	step("anomalies", func() error { return r.anomalies(ctx, conn, &s) })
	step("verify", func() error { return r.verify(ctx, conn, &s) })
	if err := errors.Join(errs...); err != nil {
		r.record(ctx, conn, &s, start, err)
		return r.fail(&s, start, err)
	}
	r.record(ctx, conn, &s, start, nil)
	s.DurationMS = time.Since(start).Milliseconds()
	return s, nil
}

func (r *Runner) fail(s *Summary, start time.Time, err error) (Summary, error) {
	s.Status = "error"
	s.Error = err.Error()
	s.DurationMS = time.Since(start).Milliseconds()
	return *s, err
}

// release unlocks and returns the connection; if the unlock cannot be
// confirmed (or there was no lock to release) the connection is closed
// instead, which ends the session and with it any lock, rather than going
// back to the pool possibly still locked.
func release(pc *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var ok bool
	if err := pc.Conn().QueryRow(ctx, "SELECT pg_advisory_unlock($1)", LockKey).Scan(&ok); err != nil || !ok {
		c := pc.Hijack()
		_ = c.Close(ctx)
		return
	}
	pc.Release()
}

// record keeps the last run's summary in apigee.rollup_state, for people
// looking at the database; failing to write it fails nothing.
func (r *Runner) record(ctx context.Context, conn *pgx.Conn, s *Summary, start time.Time, runErr error) {
	snap := *s
	snap.DurationMS = time.Since(start).Milliseconds()
	if runErr != nil {
		snap.Status, snap.Error = "error", runErr.Error()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, _ = conn.Exec(ctx, "UPDATE apigee.rollup_state SET last_run_at = now(), last_run = $1", snap)
}

// maintain hardens new raw chunks (TimescaleDB copies readers' grants onto
// them) and keeps daily partitions created ahead on plain PostgreSQL. It
// returns the storage kind.
func (r *Runner) maintain(ctx context.Context, conn *pgx.Conn, s *Summary) (string, error) {
	var storage string
	if err := conn.QueryRow(ctx, "SELECT value FROM apigee.settings WHERE key = 'storage'").Scan(&storage); err != nil {
		return "", fmt.Errorf("read storage: %w", err)
	}
	if _, err := conn.Exec(ctx, "SELECT apigee.harden_chunks()"); err != nil {
		return storage, fmt.Errorf("harden chunks: %w", err)
	}
	if storage != "partitioned" {
		return storage, nil
	}
	today := r.now().UTC().Truncate(day)
	from, to := today.AddDate(0, 0, -1), today.AddDate(0, 0, r.cfg.PartitionsAheadDays)
	var raw, rolled int
	err := conn.QueryRow(ctx, "SELECT apigee.ensure_partitions($1::date, $2::date), apigee.ensure_rollup_partitions($1::date, $2::date)",
		from.Format(time.DateOnly), to.Format(time.DateOnly)).Scan(&raw, &rolled)
	if err != nil {
		return storage, fmt.Errorf("ensure partitions: %w", err)
	}
	s.PartitionsCreated += raw + rolled
	return storage, nil
}

// refresh consumes invalidations in batches, oldest minute first, until
// none is left or the budget is spent. The first batch always runs, so
// every run makes progress however small the budget.
func (r *Runner) refresh(ctx context.Context, conn *pgx.Conn, storage string, deadline time.Time, s *Summary) error {
	// Minutes whose raw rows retention has dropped are never recomputed:
	// the recompute would see only the late rows and erase the rest.
	tag, err := conn.Exec(ctx, `
		DELETE FROM apigee.rollup_invalidations
		WHERE bucket_start < (SELECT raw_dropped_before FROM apigee.rollup_state)`)
	if err != nil {
		return fmt.Errorf("discard stale invalidations: %w", err)
	}
	s.InvalidationsDiscarded += tag.RowsAffected()

	ensured := map[time.Time]bool{}
	limit := min(firstBatchMinutes, r.batchLimit())
	for first := true; ; first = false {
		if !first && !time.Now().Before(deadline) {
			s.BudgetExhausted = true
			break
		}
		n, rowsRead, err := r.refreshBatch(ctx, conn, storage, limit, ensured, s)
		if err != nil {
			if smaller, ok := shrink(ctx, err, limit); ok {
				r.batch.Store(int64(smaller))
				limit = smaller
				continue
			}
			return err
		}
		if n == 0 {
			break
		}
		limit = nextLimit(limit, rowsRead, r.batchLimit())
	}
	s.BatchMinutes = r.batchLimit()
	if err := conn.QueryRow(ctx, "SELECT count(DISTINCT bucket_start) FROM apigee.rollup_invalidations").Scan(&s.PendingMinutes); err != nil {
		return fmt.Errorf("count pending: %w", err)
	}
	if s.PendingMinutes == 0 {
		s.BudgetExhausted = false
	}
	return nil
}

// firstBatchMinutes is the most minutes a run's first refresh batch
// takes: an hour, what one batch took before batches grew.
const firstBatchMinutes = 60

// growBelowRows: a batch that read fewer raw rows than this doubles the
// next one. A refresh transaction has a fixed cost of about 50 ms (its
// DELETEs, stage tables, snapshot, a COPY and an INSERT per rollup table
// and the commit's WAL flush; README, Rollups and percentiles); at 4–6 µs
// a raw row, 100,000 rows make it a tenth of the batch. A batch grows by
// at most doubling, so it reads about twice this at most more than the
// hours it would have taken anyway.
const growBelowRows = 100_000

// nextLimit is the next batch's minutes after one of limit minutes read
// rowsRead raw rows: doubled when that was cheap, never above most.
func nextLimit(limit int, rowsRead int64, most int) int {
	if rowsRead < growBelowRows {
		limit *= 2
	}
	return min(limit, most)
}

// batchLimit is the most minutes a refresh batch takes: BatchMinutes
// until a batch ran into the statement timeout, then less.
func (r *Runner) batchLimit() int {
	if n := r.batch.Load(); n > 0 {
		return int(n)
	}
	return r.cfg.BatchMinutes
}

// shrink halves a batch whose statement hit statement_timeout (busy
// minutes can make BatchMinutes too much for one statement); without it
// the same oversized batch would fail on every run for ever.
func shrink(ctx context.Context, err error, limit int) (int, bool) {
	var pg *pgconn.PgError
	if ctx.Err() != nil || limit <= 1 || !errors.As(err, &pg) || pg.Code != pgerrcode.QueryCanceled {
		return 0, false
	}
	return limit / 2, true
}

// refreshBatch recomputes up to limit invalidated minutes and their
// hours in one transaction and returns how many minutes it took and the
// raw rows it read.
//
// Under READ COMMITTED each statement sees every transaction committed
// before it started, so the snapshot the recompute reads under (exported
// by a statement after the DELETE) holds at least the rows of every
// invalidation the DELETE consumed; invalidations committed after the
// DELETE stay for the next batch.
func (r *Runner) refreshBatch(ctx context.Context, conn *pgx.Conn, storage string, limit int, ensured map[time.Time]bool, s *Summary) (int, int64, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	minutes, consumed, err := claimMinutes(ctx, tx, limit)
	if err != nil || len(minutes) == 0 {
		return 0, 0, err
	}
	hours := hoursOf(minutes)
	if storage == "partitioned" {
		if err := ensureRollupPartitions(ctx, tx, minutes, ensured); err != nil {
			return 0, 0, err
		}
	}
	// The raw rows are read on a second connection (recompute), taken
	// only by a batch with work: a run with nothing to refresh holds one.
	reader, err := r.db.Acquire(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("acquire reader connection: %w", err)
	}
	defer reader.Release()
	rowsRead, written, err := recompute(ctx, tx, reader.Conn(), minutes, hours)
	if err != nil {
		return 0, 0, err
	}
	if storage == "timescaledb" && newDays(minutes, ensured) {
		// New chunks carry readers' grants until revoked; revoke before
		// they are visible to anyone. Only a batch writing a day this run
		// has not written yet can have made a chunk (a rollup chunk spans
		// whole days, and the run's earlier batch for that day made it and
		// hardened it), so the others skip the walk over every chunk.
		if _, err := tx.Exec(ctx, "SELECT apigee.harden_chunks()"); err != nil {
			return 0, 0, fmt.Errorf("harden rollup chunks: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, 0, fmt.Errorf("commit: %w", err)
	}
	s.MinutesRefreshed += len(minutes)
	s.HoursRefreshed += len(hours)
	s.RefreshBatches++
	s.InvalidationsConsumed += consumed
	s.RowsRead += rowsRead
	s.RollupRowsWritten += written
	return len(minutes), rowsRead, nil
}

// claimMinutes takes up to limit of the oldest invalidated minutes (whole
// hours where it can) and deletes their invalidations in tx, returning the
// distinct minute starts and how many invalidations were consumed.
func claimMinutes(ctx context.Context, tx pgx.Tx, limit int) ([]time.Time, int64, error) {
	var minutes []time.Time
	// One minute more than the batch takes, to see whether its last hour
	// goes on past it.
	err := tx.QueryRow(ctx, `
		SELECT coalesce(array_agg(b ORDER BY b), '{}') FROM (
			SELECT DISTINCT bucket_start AS b FROM apigee.rollup_invalidations
			ORDER BY 1 LIMIT $1) s`, limit+1).Scan(&minutes)
	if err != nil {
		return nil, 0, fmt.Errorf("pick minutes: %w", err)
	}
	if len(minutes) == 0 {
		return nil, 0, nil
	}
	if len(minutes) > limit {
		next := minutes[limit].UTC().Truncate(time.Hour)
		minutes = minutes[:limit]
		// The batch cut an hour short: leave that hour's minutes to the next
		// batch so a backlog recomputes each hour once (unless the hour is
		// all the batch has).
		if minutes[limit-1].UTC().Truncate(time.Hour).Equal(next) {
			if i := slices.IndexFunc(minutes, func(m time.Time) bool { return !m.UTC().Truncate(time.Hour).Before(next) }); i > 0 {
				minutes = minutes[:i]
			}
		}
	}
	tag, err := tx.Exec(ctx, "DELETE FROM apigee.rollup_invalidations WHERE bucket_start = ANY($1)", minutes)
	if err != nil {
		return nil, 0, fmt.Errorf("consume invalidations: %w", err)
	}
	// Ingest records minute starts; normalise anyway, so a stray
	// sub-minute bucket_start still refreshes its whole minute.
	for i, m := range minutes {
		minutes[i] = m.UTC().Truncate(time.Minute)
	}
	return slices.Compact(minutes), tag.RowsAffected(), nil
}

// hoursOf returns the distinct hours of sorted minutes.
func hoursOf(minutes []time.Time) []time.Time {
	hours := make([]time.Time, 0, len(minutes))
	for _, m := range minutes {
		hours = append(hours, m.Truncate(time.Hour))
	}
	return slices.Compact(hours)
}

// newDays reports whether minutes fall on a day not in seen, adding them.
func newDays(minutes []time.Time, seen map[time.Time]bool) bool {
	fresh := false
	for _, m := range minutes {
		if d := m.Truncate(day); !seen[d] {
			seen[d] = true
			fresh = true
		}
	}
	return fresh
}

// ensureRollupPartitions creates the daily and monthly rollup partitions
// the minutes fall in, once per day per run.
func ensureRollupPartitions(ctx context.Context, tx pgx.Tx, minutes []time.Time, ensured map[time.Time]bool) error {
	var days []time.Time
	for _, m := range minutes {
		d := m.Truncate(day)
		if !ensured[d] {
			ensured[d] = true
			days = append(days, d)
		}
	}
	for _, rg := range runs(slices.Compact(days), day) {
		if _, err := tx.Exec(ctx, "SELECT apigee.ensure_rollup_partitions($1::date, $2::date)",
			rg.from.Format(time.DateOnly), rg.to.Add(-day).Format(time.DateOnly)); err != nil {
			return fmt.Errorf("ensure rollup partitions: %w", err)
		}
	}
	return nil
}

type span struct{ from, to time.Time }

// runs groups sorted bucket starts into maximal contiguous [from, to)
// spans, so each recompute is one range scan.
func runs(starts []time.Time, width time.Duration) []span {
	var out []span
	for _, t := range starts {
		if n := len(out); n > 0 && out[n-1].to.Equal(t) {
			out[n-1].to = t.Add(width)
			continue
		}
		out = append(out, span{t, t.Add(width)})
	}
	return out
}
