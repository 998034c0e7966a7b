package migrations_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"apigee-timescale/deploy/local/testkit"
)

// TestBatchHashFormatInPlace migrates an installation holding batch rows
// to 00027 and back: rows written before it read as format 1, a format
// other than 1 or 2 is refused, and 00027's down refuses (and changes
// nothing) while a format-2 batch row exists, since without the column
// the verifier would report that batch as changed.
func TestBatchHashFormatInPlace(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		p := provider(t, db)
		if _, err := p.ApplyVersion(ctx, 27, false); err != nil {
			t.Fatalf("00027 down with format-1 rows only: %v", err)
		}
		insert := func(id int64, format string) error {
			cols, vals := "", ""
			if format != "" {
				cols, vals = ", rows_sha256_format", ", "+format
			}
			_, err := db.Admin.Exec(ctx, `INSERT INTO apigee.ingest_batches (batch_id, rows_inserted, rows_duplicate,
				rows_rejected, messages, rows_sha256`+cols+`) VALUES ($1, 0, 0, 0, 1, '\x00'`+vals+`)`, id)
			return err
		}
		if err := insert(1, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := p.ApplyVersion(ctx, 27, true); err != nil {
			t.Fatalf("00027 up: %v", err)
		}
		if n := countRows(t, db, "SELECT count(*) FROM apigee.ingest_batches WHERE batch_id = 1 AND rows_sha256_format = 1"); n != 1 {
			t.Fatalf("a batch row from before 00027: %d rows in format 1, want 1", n)
		}
		var pg *pgconn.PgError
		if err := insert(3, "3"); !errors.As(err, &pg) || pg.Code != pgerrcode.CheckViolation {
			t.Fatalf("format 3: %v, want a check violation", err)
		}
		if err := insert(2, "2"); err != nil {
			t.Fatal(err)
		}
		if _, err := p.ApplyVersion(ctx, 27, false); !errors.As(err, &pg) || pg.Code != pgerrcode.RaiseException {
			t.Fatalf("00027 down with a format-2 batch row: %v, want its refusal (raise_exception)", err)
		}
		if n := countRows(t, db, "SELECT count(*) FROM apigee.ingest_batches WHERE rows_sha256_format = 2"); n != 1 {
			t.Fatalf("after the refused down: %d format-2 rows, want 1 (the column kept)", n)
		}
	})
}
