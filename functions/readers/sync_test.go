package readers_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/deploy/local/standin/apigeeapi"
	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/functions/readers"
)

// TestSyncLifecycle walks one organization through add, dry run,
// idempotent re-run, tenant change, attribute removal, revocation and
// deletion, and checks each synced role's rows through row-level security.
func TestSyncLifecycle(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		t.Parallel()
		f := newFixture(t, db)
		ctx := context.Background()
		user, userDSN := f.iamLogin(t)
		f.api.Put(org, reader("app-1", "acme", user))
		f.api.Put(org, reader("app-4", " globex, acme ,, globex", ""))
		f.api.Put(org, apigeeapi.App{AppID: "app-3", Attributes: []apigeeapi.Attribute{{Name: readers.AttrReader, Value: "false"}, {Name: readers.AttrTenants, Value: "acme"}}})
		role1, role4 := f.roleOf(t, "app-1"), f.roleOf(t, "app-4")

		// A role of a name the sync uses, carrying the marker, that the
		// sync did not make (no registry entry): never touched.
		foreign := "apigee_app_" + strings.TrimPrefix(f.roleOf(t, db.Name), "apigee_app_")
		if _, err := db.Admin.Exec(ctx, "CREATE ROLE "+pgx.Identifier{foreign}.Sanitize()+" NOLOGIN IN ROLE apigee_app_reader"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = db.Admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+pgx.Identifier{foreign}.Sanitize())
		})

		before := f.snapshot(t)
		sum := f.sync(t, true)
		if sum.Status != readers.StatusPlanned || !slices.Equal(actions(sum)[readers.ActionCreate], []string{"app-1", "app-4"}) || len(sum.Changes) != 2 {
			t.Fatalf("dry run: %+v, want two creates planned", sum)
		}
		if sum.Apps != 4 || f.api.Pages() != 2 {
			t.Fatalf("dry run saw %d apps in %d pages, want 4 in 2", sum.Apps, f.api.Pages())
		}
		if after := f.snapshot(t); after != before {
			t.Fatalf("dry run changed the database:\n%s\n%s", before, after)
		}
		f.wantGone(t, role1)

		sum = f.sync(t, false)
		if sum.Status != readers.StatusSynced || len(sum.Changes) != 2 || len(sum.Refused) != 0 {
			t.Fatalf("first run: %+v", sum)
		}
		f.wantSynced(t, role1, []string{"acme"}, user)
		f.wantSynced(t, role4, []string{"acme", "globex"})
		t.Run("rows through row-level security", func(t *testing.T) { wantSees(t, userDSN, role1, map[string]int{"acme": 2}) })

		again := f.snapshot(t)
		if sum := f.sync(t, false); sum.Status != readers.StatusUnchanged || len(sum.Changes) != 0 {
			t.Fatalf("second run: %+v, want unchanged", sum)
		}
		if f.snapshot(t) != again {
			t.Fatal("the second run changed the database")
		}

		f.api.Put(org, reader("app-1", "globex,hooli", ""))
		sum = f.sync(t, false)
		if len(sum.Changes) != 1 || sum.Changes[0].Action != readers.ActionUpdate ||
			!slices.Equal(sum.Changes[0].Grant, []string{"globex", "hooli"}) || !slices.Equal(sum.Changes[0].Revoke, []string{"acme"}) ||
			!slices.Equal(sum.Changes[0].DropMembers, []string{user}) {
			t.Fatalf("change run: %+v", sum)
		}
		f.wantSynced(t, role1, []string{"globex", "hooli"})
		// initech is known only through its hour rollup.
		f.api.Put(org, reader("app-1", "globex,initech", user))
		if sum := f.sync(t, false); len(sum.Refused) != 0 {
			t.Fatalf("a tenant with an hour rollup refused: %+v", sum.Refused)
		}
		f.wantSynced(t, role1, []string{"globex", "initech"}, user)
		t.Run("rows after the change", func(t *testing.T) { wantSees(t, userDSN, role1, map[string]int{"globex": 1, "initech": 1}) })

		// Attribute removed; app revoked.
		f.api.Put(org, apigeeapi.App{AppID: "app-4", Name: "app app-4", Attributes: []apigeeapi.Attribute{{Name: readers.AttrTenants, Value: "acme"}}})
		revoked := reader("app-1", "globex", user)
		revoked.Status = "revoked"
		f.api.Put(org, revoked)
		sum = f.sync(t, false)
		if !slices.Equal(actions(sum)[readers.ActionDrop], []string{"app-1", "app-4"}) || len(sum.Changes) != 2 {
			t.Fatalf("removal run: %+v, want app-1 and app-4 dropped", sum)
		}
		f.wantGone(t, role1)
		f.wantGone(t, role4)
		t.Run("no rows once dropped", func(t *testing.T) { wantSees(t, userDSN, "", map[string]int{}) })

		// Deleted.
		f.api.Put(org, reader("app-1", "acme", ""))
		f.sync(t, false)
		f.wantSynced(t, role1, []string{"acme"})
		f.api.Delete(org, "app-1")
		if sum := f.sync(t, false); !slices.Equal(actions(sum)[readers.ActionDrop], []string{"app-1"}) {
			t.Fatalf("deletion run: %+v", sum)
		}
		f.wantGone(t, role1)

		if s := f.state(t, foreign); !s.Exists || !s.Marked || s.Reader || s.Registered {
			t.Fatalf("the foreign role %s was touched: %+v", foreign, s)
		}
	})
}

// wantSees logs in as dsn (after SET ROLE role, unless empty) and checks
// which tenants' rows it reads.
func wantSees(t *testing.T, dsn, role string, want map[string]int) {
	t.Helper()
	ctx := context.Background()
	conn := testkit.Connect(t, dsn)
	if role != "" {
		if _, err := conn.Exec(ctx, "SET ROLE "+pgx.Identifier{role}.Sanitize()); err != nil {
			t.Fatal(err)
		}
	}
	for _, through := range []string{"apigee.api_calls"} {
		rows, err := conn.Query(ctx, "SELECT tenant, count(*)::int FROM "+through+" GROUP BY tenant")
		if err != nil {
			if role == "" && strings.Contains(err.Error(), "permission denied") {
				return // no longer a reader at all
			}
			t.Fatal(err)
		}
		got := map[string]int{}
		var tenant string
		var n int
		if _, err := pgx.ForEachRow(rows, []any{&tenant, &n}, func() error { got[tenant] = n; return nil }); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s sees %v in %s, want %v", dsn[:20], got, through, want)
		}
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("sees %v in %s, want %v", got, through, want)
			}
		}
	}
}
