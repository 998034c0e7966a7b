package rollup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/functions/ingest"
	"apigee-timescale/shared/audit"
	"apigee-timescale/shared/record"
)

// auditCall is an ingest call using every kind of column, with JSON that
// jsonb normalises (key order, number spelling, escapes).
func auditCall(id string, at time.Time) ingest.Call {
	ms, rev, size, yes := int32(42), int32(3), int64(1234), true
	code := int16(502)
	return ingest.Call{
		Record: &record.Record{
			MessageID: id, ReceivedAt: at.UTC().Truncate(time.Millisecond),
			Organization: "org", Environment: "prod", APIProxy: "orders-v1", APIProxyRevision: &rev, Tenant: "tenant-a",
			RequestVerb: "GET", RequestPath: "/orders", ResponseStatusCode: 200, TargetResponseCode: &code,
			TotalResponseTime: &ms, RequestSize: &size, IsError: &yes, ClientIP: netip.MustParseAddr("2001:db8::7"),
			UserAgent: "curl/8 \"é\"", DeveloperEmail: "d@example.com",
			Identity:   record.Identity{Subject: "sub", Auth: "jwt", Scopes: []string{"read", "write"}},
			Attributes: map[string]string{"bb": "1", "a": "<&>"},
			Extra:      map[string]json.RawMessage{"x_new": json.RawMessage(`{"zz": 1.50e1, "a": [1E2, -0, "\u0041\/"], "b": {"y": true, "x": null}}`)},
		},
		PubSubMessageID: "ps-" + id,
		PublishTime:     at.Add(123456789 * time.Nanosecond),
	}
}

func ingestWriter(t testing.TB, db *testkit.DB) *ingest.Writer {
	t.Helper()
	return ingest.NewWriter(db.LoginPool(t, "apigee_ingest"))
}

// writeBatches writes n batches of the given ages through the ingest
// Writer and returns their ids.
func writeBatches(t testing.TB, w *ingest.Writer, prefix string, ages ...[]time.Duration) []int64 {
	t.Helper()
	now := time.Now()
	var ids []int64
	for i, batch := range ages {
		b := &ingest.Batch{Messages: 1}
		for j, age := range batch {
			b.Calls = append(b.Calls, auditCall(fmt.Sprintf("%s-%d-%d", prefix, i, j), now.Add(-age)))
		}
		res, err := w.Write(context.Background(), b)
		if err != nil {
			t.Fatalf("write batch: %v", err)
		}
		ids = append(ids, res.BatchID)
	}
	return ids
}

func mustVerify(t testing.TB, q audit.Querier) audit.Report {
	t.Helper()
	rep, err := audit.Verify(context.Background(), q, audit.Options{Orphans: true})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return rep
}

func TestSealAndVerifyIntact(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		w := ingestWriter(t, db)
		ids := writeBatches(t, w, "a", []time.Duration{0, time.Minute}, []time.Duration{time.Second}, nil)
		r := newTestRunner(t, db, testConfig(), nil)
		s := mustRun(t, r)
		if s.BatchesSealed != 3 || s.SealHead == nil || s.SealHead.BatchID != ids[2] {
			t.Fatalf("sealed %d, head %+v; want 3 up to batch %d", s.BatchesSealed, s.SealHead, ids[2])
		}
		if s.Verify == nil || s.Verify.Problem != nil || s.Verify.Batches != 3 || s.Verify.Rows != 3 {
			t.Fatalf("budgeted verify: %+v", s.Verify)
		}
		rep := mustVerify(t, db.Admin)
		if rep.Problem != nil || !rep.Done || rep.Batches != 3 || rep.Rows != 3 || rep.HeadSeal != s.SealHead.Seal {
			t.Fatalf("verify: %+v, want intact over 3 batches and 3 rows, head %s", rep, s.SealHead.Seal)
		}
		// A second run seals nothing and keeps the head.
		if s2 := mustRun(t, r); s2.BatchesSealed != 0 || *s2.SealHead != *s.SealHead {
			t.Fatalf("second run: sealed %d, head %+v", s2.BatchesSealed, s2.SealHead)
		}
		// Seals are append-only for the rollup's own role.
		_, err := rollupPool(t, db).Exec(context.Background(), "UPDATE apigee.audit_seals SET seal = seal")
		var pg *pgconn.PgError
		if !errors.As(err, &pg) || pg.Code != pgerrcode.InsufficientPrivilege {
			t.Fatalf("rollup updating a seal: %v, want insufficient_privilege", err)
		}
	})
}

// TestVerifyNamesTheDamage tampers as the owner (who alone may change
// rows) inside a transaction that is rolled back, and runs the verifier
// inside it.
func TestVerifyNamesTheDamage(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		w := ingestWriter(t, db)
		ids := writeBatches(t, w, "b", []time.Duration{0, time.Minute, 2 * time.Minute}, []time.Duration{0, time.Second}, []time.Duration{time.Hour})
		mustRun(t, newTestRunner(t, db, testConfig(), nil))
		target := ids[1]
		// The target went in one round trip (migration 00027's format 2),
		// the others' batch rows may not have; the chain holds both.
		var format int16
		if err := db.Admin.QueryRow(ctx, "SELECT rows_sha256_format FROM apigee.ingest_batches WHERE batch_id = $1", target).Scan(&format); err != nil || format != audit.RowsFormat2 {
			t.Fatalf("target batch in format %d (%v), want %d", format, err, audit.RowsFormat2)
		}
		cases := []struct {
			name string
			sql  []string
			kind audit.Kind
			at   int64
		}{
			{"change one value", []string{"UPDATE apigee.api_calls SET response_status_code = 503 WHERE message_id = 'b-1-1'"}, audit.ChangedRow, target},
			{"change a json value", []string{`UPDATE apigee.api_calls SET attributes = '{"a": "<&>", "bb": "2"}' WHERE message_id = 'b-1-0'`}, audit.ChangedRow, target},
			{"delete one row", []string{"DELETE FROM apigee.api_calls WHERE message_id = 'b-1-0'"}, audit.MissingRow, target},
			{"insert a row into a batch", []string{`INSERT INTO apigee.api_calls (received_at, message_id, tenant, organization, environment, apiproxy,
				request_verb, request_path, response_status_code, batch_id)
				SELECT received_at, 'forged', tenant, organization, environment, apiproxy, request_verb, request_path, 200, batch_id
				FROM apigee.api_calls WHERE message_id = 'b-1-0'`}, audit.ExtraRow, target},
			{"insert a row under an unknown batch id", []string{`INSERT INTO apigee.api_calls (received_at, message_id, tenant, organization, environment, apiproxy,
				request_verb, request_path, response_status_code, batch_id)
				SELECT received_at, 'forged', tenant, organization, environment, apiproxy, request_verb, request_path, 200, 999999
				FROM apigee.api_calls WHERE message_id = 'b-1-0'`}, audit.ExtraRow, 999999},
			{"delete a batch row", []string{fmt.Sprintf("DELETE FROM apigee.ingest_batches WHERE batch_id = %d", target)}, audit.MissingBatch, target},
			{"delete a batch and its seal", []string{
				fmt.Sprintf("DELETE FROM apigee.ingest_batches WHERE batch_id = %d", target),
				fmt.Sprintf("DELETE FROM apigee.audit_seals WHERE batch_id = %d", target)}, audit.BrokenLink, ids[2]},
			{"switch a batch row's hash format", []string{fmt.Sprintf("UPDATE apigee.ingest_batches SET rows_sha256_format = 1 WHERE batch_id = %d", target)}, audit.ChangedRow, target},
			{"rewrite a batch row", []string{fmt.Sprintf("UPDATE apigee.ingest_batches SET rows_inserted = 1 WHERE batch_id = %d", target),
				"DELETE FROM apigee.api_calls WHERE message_id = 'b-1-0'"}, audit.BrokenLink, target},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				tx := ownerTx(t, db)
				for _, q := range c.sql {
					if _, err := tx.Exec(ctx, q); err != nil {
						t.Fatalf("%s: %v", q, err)
					}
				}
				assertProblem(t, tx, c.at, c.kind)
			})
		}
		t.Run("rewrite rows and the batch's hash together", func(t *testing.T) {
			tx := ownerTx(t, db)
			if _, err := tx.Exec(ctx, "UPDATE apigee.api_calls SET response_status_code = 503 WHERE message_id = 'b-1-1'"); err != nil {
				t.Fatal(err)
			}
			sum, _, err := audit.HashStored(ctx, tx, target)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "UPDATE apigee.ingest_batches SET rows_sha256 = $1 WHERE batch_id = $2", sum[:], target); err != nil {
				t.Fatal(err)
			}
			assertProblem(t, tx, target, audit.BrokenLink)
		})
		// Nothing above was committed.
		if rep := mustVerify(t, db.Admin); rep.Problem != nil {
			t.Fatalf("after the rolled-back tampering: %s", rep.Problem)
		}
	})
}

func ownerTx(t *testing.T, db *testkit.DB) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := db.Admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	if _, err := tx.Exec(ctx, "SET LOCAL ROLE apigee_owner"); err != nil {
		t.Fatal(err)
	}
	return tx
}

func assertProblem(t *testing.T, q audit.Querier, batch int64, kind audit.Kind) {
	t.Helper()
	rep := mustVerify(t, q)
	if rep.Problem == nil {
		t.Fatalf("verify found nothing: %+v", rep)
	}
	if rep.Problem.BatchID != batch || rep.Problem.Kind != kind {
		t.Fatalf("verify: %s; want batch %d: %s", rep.Problem, batch, kind)
	}
}

// TestSealWaitsForOpenIngestTransactions: a batch that took its id but has
// not committed keeps later batches out of the chain until it ends, so the
// chain never skips it.
func TestSealWaitsForOpenIngestTransactions(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		_, dsn := db.Login(t, "apigee_ingest")
		open := testkit.Connect(t, dsn)
		tx, err := open.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx) //nolint:errcheck
		var early int64
		if err := tx.QueryRow(ctx, "SELECT nextval('apigee.ingest_batch_id_seq')").Scan(&early); err != nil {
			t.Fatal(err)
		}
		later := writeBatches(t, ingestWriter(t, db), "c", []time.Duration{0})[0]
		r := newTestRunner(t, db, testConfig(), nil)
		r.sealWait = 200 * time.Millisecond
		if s := mustRun(t, r); s.BatchesSealed != 0 || !s.SealWaiting {
			t.Fatalf("with batch %d open: sealed %d (waiting %v), want nothing sealed past it", early, s.BatchesSealed, s.SealWaiting)
		}
		empty := audit.NewHasher(early).Sum()
		if _, err := tx.Exec(ctx, `INSERT INTO apigee.ingest_batches (batch_id, rows_inserted, rows_duplicate, rows_rejected, messages, rows_sha256)
			VALUES ($1, 0, 0, 0, 1, $2)`, early, empty[:]); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		s := mustRun(t, r)
		if s.BatchesSealed != 2 || s.SealHead.BatchID != later {
			t.Fatalf("after commit: sealed %d, head %+v; want 2 up to %d", s.BatchesSealed, s.SealHead, later)
		}
		if rep := mustVerify(t, db.Admin); rep.Problem != nil || rep.Batches != 2 {
			t.Fatalf("verify: %+v", rep)
		}
	})
}

// TestRetentionIsNotTampering: dropping old days leaves the chain intact,
// also for a batch with rows on both sides of the cutoff.
func TestRetentionIsNotTampering(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		w := ingestWriter(t, db)
		old := 40 * day
		ids := writeBatches(t, w, "d", []time.Duration{old, old + time.Hour}, []time.Duration{old, 0}, []time.Duration{0})
		r := newTestRunner(t, db, testConfig(), nil)
		runs := runUntilDone(t, r)
		dropped := 0
		for _, s := range runs {
			dropped += s.ChunksDropped
		}
		if dropped == 0 {
			runs = append(runs, mustRun(t, r))
			dropped = runs[len(runs)-1].ChunksDropped
		}
		if dropped == 0 {
			t.Fatal("retention dropped nothing; the test proves nothing")
		}
		if n := queryInt(t, db.Admin, "SELECT count(*) FROM apigee.api_calls WHERE batch_id = $1", ids[0]); n != 0 {
			t.Fatalf("%d rows of the old batch left", n)
		}
		if n := queryInt(t, db.Admin, "SELECT count(*) FROM apigee.audit_retained WHERE head_batch_id = $1", ids[2]); n == 0 {
			t.Fatal("no retained range recorded with the chain's head")
		}
		rep := mustVerify(t, db.Admin)
		if rep.Problem != nil || rep.Batches != 3 || rep.Retained != 2 || rep.Rows != 2 {
			t.Fatalf("verify after retention: %+v (problem %v), want intact, 3 batches, 2 retained, 2 rows", rep, rep.Problem)
		}
	})
}

// TestBudgetedVerifyContinues: with a tiny VERIFY_BUDGET each run checks
// one batch and the next continues after it; damage fails the run naming
// the batch.
func TestBudgetedVerifyContinues(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ids := writeBatches(t, ingestWriter(t, db), "e", []time.Duration{0}, []time.Duration{0}, []time.Duration{0})
		cfg := testConfig()
		cfg.VerifyBudget = time.Nanosecond
		r := newTestRunner(t, db, cfg, nil)
		for i, id := range ids[:2] {
			s := mustRun(t, r)
			if s.Verify == nil || s.Verify.Through != id || s.Verify.Batches != 1 {
				t.Fatalf("run %d verified %+v, want batch %d alone", i+1, s.Verify, id)
			}
		}
		if _, err := db.Admin.Exec(context.Background(), "SET ROLE apigee_owner; UPDATE apigee.api_calls SET tenant = 'other' WHERE message_id = 'e-2-0'; RESET ROLE"); err != nil {
			t.Fatal(err)
		}
		_, err := r.Run(context.Background())
		var te *audit.TamperedError
		if !errors.As(err, &te) || te.Problem.BatchID != ids[2] || te.Problem.Kind != audit.ChangedRow {
			t.Fatalf("run after tampering: %v, want a changed row in batch %d", err, ids[2])
		}
	})
}
