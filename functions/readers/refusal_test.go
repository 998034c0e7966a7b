package readers_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/deploy/local/standin/apigeeapi"
	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/functions/readers"
)

// TestRefusals: apps with malicious or impossible values are refused one by
// one, with a reason; they get nothing, an app already synced keeps what it
// had, and the good app of the same run is synced.
func TestRefusals(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		t.Parallel()
		f := newFixture(t, db)
		ctx := context.Background()
		f.api.Put(org, reader("kept", "acme", ""))
		f.sync(t, false)
		kept := f.roleOf(t, "kept")
		f.wantSynced(t, kept, []string{"acme"})

		many := make([]string, 10000)
		for i := range many {
			many[i] = fmt.Sprintf("t%d", i)
		}
		taken := f.roleOf(t, "taken")
		if _, err := db.Admin.Exec(ctx, "CREATE ROLE "+pgx.Identifier{taken}.Sanitize()+" NOLOGIN"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = db.Admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+pgx.Identifier{taken}.Sanitize())
		})
		cases := []struct {
			app    apigeeapi.App
			reason string
		}{
			{reader("sql-tenant", "acme'); DROP ROLE apigee_owner; --", ""), "a tenant is 1 to 128"},
			{reader("sql-quote", `acme" OR true --`, ""), "a tenant is 1 to 128"},
			{reader("many", strings.Join(many, ","), ""), "more than 100 tenants"},
			{reader("101", strings.Join(many[:101], ","), ""), "names 101 tenants, at most 100"},
			{reader("unknown", "acme,nosuch", ""), "unknown tenant(s): nosuch"},
			{reader("long-tenant", strings.Repeat("a", 129), ""), "a tenant is 1 to 128"},
			{reader("non-utf8", "acme,glob\xffex", ""), "not valid UTF-8"},
			{reader("control", "acme,\nglobex", ""), "control characters"},
			{reader("empty", " , ", ""), "names no tenant"},
			{reader("iam-sql", "acme", `x@y"; DROP ROLE apigee_owner; --`), "not a Cloud SQL IAM database user name"},
			{reader("iam-long", "acme", strings.Repeat("a", 60)+"@p.iam"), "at most 63 bytes"},
			{reader("iam-ghost", "acme", "ghost@test-project.iam"), "not a login"},
			{reader("iam-super", "acme", "postgres"), "not a Cloud SQL IAM database user name"},
			{reader("taken", "acme", ""), "exists and was not made by the reader sync"},
			{apigeeapi.App{AppID: "yes", Attributes: []apigeeapi.Attribute{{Name: readers.AttrReader, Value: "yes"}}}, "want true or false"},
			{apigeeapi.App{AppID: "twice", Attributes: []apigeeapi.Attribute{{Name: readers.AttrReader, Value: "true"},
				{Name: readers.AttrTenants, Value: "acme"}, {Name: readers.AttrTenants, Value: "globex"}}}, "set twice"},
			{reader("long-name\xfe", "acme", ""), "appId is not valid UTF-8"},
			{reader(strings.Repeat("x", 200), "acme", ""), "appId is 200 bytes"},
			{reader("kept", strings.Join(many, ","), ""), "more than 100 tenants"},
		}
		for _, c := range cases {
			f.api.Put(org, c.app)
		}
		f.api.Put(org, reader("good", "globex", ""))
		before := f.snapshot(t)
		sum := f.sync(t, false)
		if len(sum.Changes) != 1 || sum.Changes[0].AppID != "good" || sum.Changes[0].Action != readers.ActionCreate {
			t.Fatalf("changes %+v, want only the good app created", sum.Changes)
		}
		reasons := map[string]string{}
		for _, r := range sum.Refused {
			reasons[r.AppID] = r.Reason
		}
		for _, c := range cases {
			// The stand-in's JSON turns invalid UTF-8 into U+FFFD, as a
			// decoder of the real API's answer would.
			id := strings.ToValidUTF8(c.app.AppID, "\uFFFD")
			got, ok := reasons[id]
			if !ok || !strings.Contains(got, c.reason) {
				t.Errorf("app %.20q: refusal %q, want one containing %q", id, got, c.reason)
			}
			if len(got) > 400 {
				t.Errorf("app %.20q: refusal of %d bytes quotes too much", id, len(got))
			}
			if id != "kept" && id != "taken" {
				f.wantGone(t, f.roleOf(t, id))
			}
		}
		if len(sum.Refused) != len(cases) {
			t.Errorf("%d refusals, want %d: %+v", len(sum.Refused), len(cases), sum.Refused)
		}
		f.wantSynced(t, kept, []string{"acme"})
		f.wantSynced(t, f.roleOf(t, "good"), []string{"globex"})
		if s := f.state(t, taken); !s.Exists || s.Reader || s.Marked || s.Registered {
			t.Fatalf("the role under the taken name was touched: %+v", s)
		}
		var owner bool
		if err := db.Admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'apigee_owner')").Scan(&owner); err != nil || !owner {
			t.Fatalf("apigee_owner exists: %v (%v)", owner, err)
		}
		if after := f.snapshot(t); strings.Count(after, "apigee_app_") <= strings.Count(before, "apigee_app_") {
			t.Fatalf("the good app was not added:\n%s\n%s", before, after)
		}
	})
}

// TestRunIsOneTransaction: when the database fails in the middle of a
// run, the changes made before it are rolled back with it.
func TestRunIsOneTransaction(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		t.Parallel()
		f := newFixture(t, db)
		ctx := context.Background()
		_, err := db.Admin.Exec(ctx, `
CREATE FUNCTION public.fail_globex() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.tenant = 'globex' THEN RAISE EXCEPTION 'injected failure'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_globex BEFORE INSERT ON apigee.tenant_grants FOR EACH ROW EXECUTE FUNCTION public.fail_globex()`)
		if err != nil {
			t.Fatal(err)
		}
		f.api.Put(org, reader("a-first", "acme", ""))
		f.api.Put(org, reader("b-second", "globex", ""))
		before := f.snapshot(t)
		sum, err := f.svc.Sync(ctx, false)
		if err == nil || sum.Status != readers.StatusFailed || !strings.Contains(sum.Error, "injected failure") {
			t.Fatalf("run %+v, err %v: want it failed by the injected error", sum, err)
		}
		if after := f.snapshot(t); after != before {
			t.Fatalf("a failed run left changes:\n%s\n%s", before, after)
		}
		f.wantGone(t, f.roleOf(t, "a-first"))
		if _, err := db.Admin.Exec(ctx, "DROP TRIGGER fail_globex ON apigee.tenant_grants"); err != nil {
			t.Fatal(err)
		}
		if sum := f.sync(t, false); len(sum.Changes) != 2 {
			t.Fatalf("run after the fault: %+v", sum)
		}
	})
}

// TestLockHeld: a run that finds another holding the lock changes nothing.
func TestLockHeld(t *testing.T) {
	t.Parallel()
	db := testkit.New(t, testkit.Postgres)
	f := newFixture(t, db)
	ctx := context.Background()
	f.api.Put(org, reader("app", "acme", ""))
	tx, err := db.Admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", readers.LockKey); err != nil {
		t.Fatal(err)
	}
	if sum := f.sync(t, false); sum.Status != readers.StatusSkipped || len(sum.Changes) != 0 {
		t.Fatalf("run with the lock held: %+v, want skipped", sum)
	}
	f.wantGone(t, f.roleOf(t, "app"))
	_ = tx.Rollback(ctx)
	if sum := f.sync(t, false); sum.Status != readers.StatusSynced {
		t.Fatalf("run after the lock was released: %+v", sum)
	}
}
