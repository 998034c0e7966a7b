package readers_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"apigee-timescale/deploy/local/testkit"
)

// TestDatabaseGuards: the sync's login itself cannot touch a role the
// sync did not make, whatever it sends: the guard is in the database, not
// only in the Go code.
func TestDatabaseGuards(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		t.Parallel()
		f := newFixture(t, db)
		ctx := context.Background()
		f.api.Put(org, reader("ours", "acme", ""))
		f.sync(t, false)
		// A marked role under a synced-looking name, not registered here.
		foreign := f.roleOf(t, "foreign")
		if _, err := db.Admin.Exec(ctx, "CREATE ROLE "+pgx.Identifier{foreign}.Sanitize()+" NOLOGIN IN ROLE apigee_app_reader"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = db.Admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+pgx.Identifier{foreign}.Sanitize())
		})
		_, dsn := db.Login(t, "apigee_reader_sync")
		conn := testkit.Connect(t, dsn)
		cases := []struct {
			name, sql string
			args      []any
			code      string
		}{
			{"drop a role not ours", "SELECT apigee.reader_role_drop($1)", []any{foreign}, pgerrcode.InsufficientPrivilege},
			{"drop the owner", "SELECT apigee.reader_role_drop('apigee_owner')", nil, pgerrcode.InsufficientPrivilege},
			{"put under a taken name", "SELECT apigee.reader_role_put('foreign', 'x', ARRAY['acme'], NULL)", nil, pgerrcode.InsufficientPrivilege},
			{"grant a superuser", "SELECT apigee.reader_role_put('ours', 'x', ARRAY['acme'], 'postgres')", nil, pgerrcode.InvalidParameterValue},
			{"no tenants", "SELECT apigee.reader_role_put('ours', 'x', '{}', NULL)", nil, pgerrcode.InvalidParameterValue},
			{"create a role", "CREATE ROLE sneaky NOLOGIN", nil, pgerrcode.InsufficientPrivilege},
			{"write grants", "INSERT INTO apigee.tenant_grants (role_name, tenant) VALUES ('x', 'acme')", nil, pgerrcode.InsufficientPrivilege},
			{"write the registry", "DELETE FROM apigee.reader_apps", nil, pgerrcode.InsufficientPrivilege},
			{"read rows", "SELECT count(*) FROM apigee.api_calls", nil, pgerrcode.InsufficientPrivilege},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				before := f.snapshot(t)
				_, err := conn.Exec(ctx, c.sql, c.args...)
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != c.code {
					t.Fatalf("err = %v, want SQLSTATE %s", err, c.code)
				}
				if after := f.snapshot(t); after != before {
					t.Fatalf("the refused statement changed something:\n%s\n%s", before, after)
				}
			})
		}
		if s := f.state(t, foreign); !s.Exists || !s.Marked || s.Reader || s.Registered {
			t.Fatalf("foreign role touched: %+v", s)
		}
		f.wantSynced(t, f.roleOf(t, "ours"), []string{"acme"})
	})
}
