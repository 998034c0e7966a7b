package readers_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/deploy/local/stack"
	"apigee-timescale/deploy/local/standin/apigeeapi"
	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/functions/readers"
	"apigee-timescale/functions/rollup"
	"apigee-timescale/shared/logging"
)

const org = "test-org"

// fixture is one sync setup: a fresh database holding calls of acme,
// globex and initech (acme, globex and hooli in the allow-list, initech
// known through its hour rollup), the sync logged in as
// a member of apigee_reader_sync, and a stand-in Apigee API serving pages
// of two apps.
type fixture struct {
	db   *testkit.DB
	api  *apigeeapi.Server
	svc  *readers.Service
	logs *stack.SyncBuffer
}

func newFixture(t *testing.T, db *testkit.DB) *fixture {
	t.Helper()
	ctx := context.Background()
	// Registered after the database's cleanup, so it runs before the drop:
	// roles are cluster-wide and must not outlive the test.
	t.Cleanup(func() { dropSynced(t, db) })
	api := apigeeapi.Start(t)
	api.PageLimit = 2
	api.Put(org, apigeeapi.App{AppID: "unrelated", Name: "unrelated"})
	now := time.Now().UTC()
	for i, tenant := range []string{"acme", "acme", "globex", "initech"} {
		_, err := db.Admin.Exec(ctx, `INSERT INTO apigee.api_calls (received_at, message_id, tenant, organization, environment, apiproxy,
			request_verb, request_path, response_status_code, batch_id) VALUES ($1, $2, $3, 'org', 'prod', 'p', 'GET', '/', 200, 1)`,
			now, fmt.Sprintf("m-%d", i), tenant)
		if err != nil {
			t.Fatal(err)
		}
	}
	// acme and globex are known from the allow-list; initech only from its
	// hour rollup, written by the real rollup run; hooli has no calls yet.
	if _, err := db.Admin.Exec(ctx, "INSERT INTO apigee.known_tenants (tenant) VALUES ('acme'), ('globex'), ('hooli')"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Admin.Exec(ctx, "INSERT INTO apigee.rollup_invalidations (batch_id, bucket_start) VALUES (1, date_trunc('minute', $1::timestamptz))", now); err != nil {
		t.Fatal(err)
	}
	cfg := rollup.DefaultConfig()
	cfg.RunBudget = time.Minute
	if sum, err := rollup.NewRunner(db.LoginPool(t, "apigee_rollup"), cfg, nil).Run(ctx); err != nil || sum.HoursRefreshed == 0 {
		t.Fatalf("rollup run for initech's hour: %+v, %v", sum, err)
	}
	f := &fixture{db: db, api: api, logs: &stack.SyncBuffer{}}
	f.svc = f.service(t, nil)
	return f
}

func (f *fixture) service(t *testing.T, v readers.Verifier) *readers.Service {
	t.Helper()
	lister, err := readers.NewAPIClient(context.Background(), org, f.api.URL)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := readers.NewService(readers.Config{Org: org},
		readers.Deps{DB: f.db.LoginPool(t, "apigee_reader_sync"), Apps: lister, Verifier: v, Logger: logging.New(f.logs, slog.LevelDebug)})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// dropSynced drops the roles the sync made in db.
func dropSynced(t *testing.T, db *testkit.DB) {
	ctx := context.Background()
	rows, err := db.Admin.Query(ctx, "SELECT role_name::text FROM apigee.reader_apps")
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	names, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	for _, n := range names {
		_, _ = db.Admin.Exec(ctx, "DROP ROLE IF EXISTS "+pgx.Identifier{n}.Sanitize())
	}
}

// reader is an app marked as a reader of tenants, logging in as iam.
func reader(id, tenants, iam string) apigeeapi.App {
	a := apigeeapi.App{AppID: id, Name: "app " + id, Attributes: []apigeeapi.Attribute{
		{Name: "other", Value: "x"}, {Name: readers.AttrReader, Value: "true"}, {Name: readers.AttrTenants, Value: tenants}}}
	if iam != "" {
		a.Attributes = append(a.Attributes, apigeeapi.Attribute{Name: readers.AttrIAMUser, Value: iam})
	}
	return a
}

// sync runs once and fails the test on an error.
func (f *fixture) sync(t *testing.T, dry bool) readers.Summary {
	t.Helper()
	sum, err := f.svc.Sync(context.Background(), dry)
	if err != nil {
		t.Fatalf("sync: %v (%+v)", err, sum)
	}
	return sum
}

// roleOf is the role app id maps to in this database.
func (f *fixture) roleOf(t *testing.T, id string) string {
	t.Helper()
	var r string
	if err := f.db.Admin.QueryRow(context.Background(), "SELECT apigee.reader_role_name($1)::text", id).Scan(&r); err != nil {
		t.Fatal(err)
	}
	return r
}

// roleState is a role as the catalog and the grants table have it.
type roleState struct {
	Exists, Reader, Marked, Registered bool
	Tenants, Members                   []string
}

func (f *fixture) state(t *testing.T, role string) roleState {
	t.Helper()
	var s roleState
	err := f.db.Admin.QueryRow(context.Background(), `
SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
       EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid WHERE r.rolname = $1 AND g.rolname = 'apigee_reader'),
       EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid WHERE r.rolname = $1 AND g.rolname = 'apigee_app_reader'),
       EXISTS (SELECT 1 FROM apigee.reader_apps WHERE role_name = $1),
       coalesce((SELECT array_agg(tenant ORDER BY tenant) FROM apigee.tenant_grants WHERE role_name = $1), '{}'),
       coalesce((SELECT array_agg(u.rolname::text ORDER BY u.rolname) FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
                 JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = $1), '{}')`, role).
		Scan(&s.Exists, &s.Reader, &s.Marked, &s.Registered, &s.Tenants, &s.Members)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// wantSynced fails unless role is a synced reader of exactly tenants whose
// members are exactly members.
func (f *fixture) wantSynced(t *testing.T, role string, tenants []string, members ...string) {
	t.Helper()
	s := f.state(t, role)
	if members == nil {
		members = []string{}
	}
	if !s.Exists || !s.Reader || !s.Marked || !s.Registered || !slices.Equal(s.Tenants, tenants) || !slices.Equal(s.Members, members) {
		t.Fatalf("role %s is %+v; want a synced reader of %v with members %v", role, s, tenants, members)
	}
}

// wantGone fails unless role and every trace of it are gone.
func (f *fixture) wantGone(t *testing.T, role string) {
	t.Helper()
	if s := f.state(t, role); s.Exists || s.Registered || len(s.Tenants) > 0 {
		t.Fatalf("role %s is %+v; want it gone with its grants", role, s)
	}
}

// snapshot is everything the sync may change, to prove a run changed nothing.
func (f *fixture) snapshot(t *testing.T) string {
	t.Helper()
	var s string
	err := f.db.Admin.QueryRow(context.Background(), `
SELECT (SELECT coalesce(string_agg(role_name || '=' || app_id || '/' || app_name, ',' ORDER BY role_name), '') FROM apigee.reader_apps) || ' | ' ||
       (SELECT coalesce(string_agg(role_name || ':' || tenant, ',' ORDER BY role_name, tenant), '') FROM apigee.tenant_grants) || ' | ' ||
       (SELECT coalesce(string_agg(g.rolname || '>' || u.rolname, ',' ORDER BY g.rolname, u.rolname), '') FROM pg_auth_members m
         JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE g.rolname LIKE 'apigee\_app\_%' OR u.rolname LIKE 'apigee\_app\_%')`).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// iamLogin creates a login named like a Cloud SQL IAM user (with a
// password, standing in for IAM authentication) and returns its name and a
// URL connecting as it.
func (f *fixture) iamLogin(t *testing.T) (name, dsn string) {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name = "t_" + hex.EncodeToString(b) + "@test-project.iam"
	password := hex.EncodeToString(b) + "-pw"
	ctx := context.Background()
	if _, err := f.db.Admin.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", pgx.Identifier{name}.Sanitize(), password)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = f.db.Admin.Exec(context.Background(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name)
		_, _ = f.db.Admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+pgx.Identifier{name}.Sanitize())
	})
	u, err := url.Parse(f.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(name, password)
	return name, u.String()
}

func actions(sum readers.Summary) map[string][]string {
	out := map[string][]string{}
	for _, c := range sum.Changes {
		out[c.Action] = append(out[c.Action], c.AppID)
	}
	for _, ids := range out {
		slices.Sort(ids)
	}
	return out
}
