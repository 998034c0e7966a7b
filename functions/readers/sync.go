// Package readers is the function that mirrors Apigee apps marked as
// database readers into PostgreSQL roles.
//
// An app whose custom attribute timescale_reader is "true" gets one NOLOGIN
// role, apigee_app_ + 16 hex digits of SHA-256(database name, app id), a
// member of apigee_reader and of the marker group apigee_app_reader, whose
// apigee.tenant_grants rows are exactly the tenants of timescale_tenants;
// timescale_iam_user names the Cloud SQL IAM database user that is its
// only member (its login). When the attribute goes, or the app is deleted
// or revoked, the role and its grants go.
//
// A run: list every approved app (all pages, or nothing is done), then in
// one transaction: take an advisory lock (a run that finds it taken answers
// "skipped"), read the roles this database's sync made (apigee.reader_apps),
// check each app's values (syntax, limits, known tenants, existing IAM
// users, no foreign role under its name), compute the plan, and apply it
// through apigee.reader_role_put/_drop, the SECURITY DEFINER functions of
// migration 00020, which refuse any role not carrying the sync's marks. A
// dry run rolls back instead; a second run finds nothing to change. An app
// with a bad value is refused, named in the summary, and keeps whatever it
// had; a failure anywhere rolls the whole run back.
package readers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// lockKey is the transaction advisory lock every run takes ("apigread").
const lockKey int64 = 0x6170696772656164

// Summary.Status values.
const (
	StatusSynced    = "synced"
	StatusUnchanged = "unchanged"
	StatusPlanned   = "planned" // a dry run
	StatusSkipped   = "skipped" // another run holds the lock
	StatusFailed    = "failed"
)

// Summary describes a run.
type Summary struct {
	Status     string    `json:"status"`
	DryRun     bool      `json:"dry_run"`
	Apps       int       `json:"apps"`
	Readers    int       `json:"readers"`
	Changes    []Change  `json:"changes"`
	Refused    []Refusal `json:"refused"`
	Error      string    `json:"error,omitempty"`
	DurationMS int64     `json:"duration_ms"`
}

// Conns hands out the sync's connections (a login in apigee_reader_sync);
// *dbconn.DB is one.
type Conns interface {
	Acquire(ctx context.Context) (*pgxpool.Conn, error)
}

// Service runs syncs; ServeHTTP is its HTTP face. Safe for concurrent use.
type Service struct {
	cfg      Config
	db       Conns
	apps     Lister
	verifier Verifier
	log      *slog.Logger
	closers  []func()
}

// Deps are the service's collaborators.
type Deps struct {
	DB   Conns
	Apps Lister
	// Verifier, when nil, turns caller authentication off.
	Verifier Verifier
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// NewService checks cfg (DB is not used: d.DB is) and returns a Service.
func NewService(cfg Config, d Deps) (*Service, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("readers: %w", err)
	}
	if d.DB == nil || d.Apps == nil {
		return nil, errors.New("readers: a database and an app lister are required")
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, db: d.DB, apps: d.Apps, verifier: d.Verifier, log: d.Logger}, nil
}

// Close releases what NewFromEnv opened.
func (s *Service) Close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}

// Sync runs once; dryRun (or Config.DryRun) plans without changing
// anything. The summary is filled in also when err is not nil.
func (s *Service) Sync(ctx context.Context, dryRun bool) (sum Summary, err error) {
	start := time.Now()
	sum = Summary{Status: StatusFailed, DryRun: dryRun || s.cfg.DryRun, Changes: []Change{}, Refused: []Refusal{}}
	defer func() {
		sum.DurationMS = time.Since(start).Milliseconds()
		if err != nil {
			sum.Status, sum.Error = StatusFailed, err.Error()
		}
	}()
	apps, err := s.apps.ListApps(ctx)
	if err != nil {
		return sum, fmt.Errorf("readers: %w", err)
	}
	sum.Apps = len(apps)
	conn, err := s.db.Acquire(ctx)
	if err != nil {
		return sum, fmt.Errorf("readers: database: %w", err)
	}
	defer conn.Release()
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error { return s.syncTx(ctx, tx, apps, &sum) })
	if errors.Is(err, errRolledBack) {
		err = nil
	}
	return sum, err
}

// errRolledBack ends a transaction that must not commit (a dry run, or a
// run that found the lock taken) without being an error.
var errRolledBack = errors.New("rolled back")

func (s *Service) syncTx(ctx context.Context, tx pgx.Tx, apps []App, sum *Summary) error {
	var locked bool
	if err := tx.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1)", lockKey).Scan(&locked); err != nil {
		return fmt.Errorf("readers: lock: %w", err)
	}
	if !locked {
		sum.Status = StatusSkipped
		return errRolledBack
	}
	have, err := readCurrent(ctx, tx)
	if err != nil {
		return err
	}
	want, refused, err := s.check(ctx, tx, apps, have, sum)
	if err != nil {
		return err
	}
	sum.Readers = len(want)
	sum.Changes = diff(want, have, refused)
	if sum.Changes == nil {
		sum.Changes = []Change{}
	}
	switch {
	case sum.DryRun:
		sum.Status = StatusPlanned
		return errRolledBack
	case len(sum.Changes) == 0:
		sum.Status = StatusUnchanged
		return errRolledBack
	}
	if err := apply(ctx, tx, sum.Changes); err != nil {
		return err
	}
	sum.Status = StatusSynced
	return nil
}

// apply carries out the plan. Values go as parameters; the functions quote
// the role names they build themselves.
func apply(ctx context.Context, tx pgx.Tx, changes []Change) error {
	for _, c := range changes {
		var err error
		if c.Action == ActionDrop {
			_, err = tx.Exec(ctx, "SELECT apigee.reader_role_drop($1)", c.Role)
		} else {
			var tenants []string
			tenants, err = wantTenants(ctx, tx, c)
			if err == nil {
				var iam *string
				if c.IAMUser != "" {
					iam = &c.IAMUser
				}
				_, err = tx.Exec(ctx, "SELECT apigee.reader_role_put($1, $2, $3, $4)", c.AppID, c.App, tenants, iam)
			}
		}
		if err != nil {
			return fmt.Errorf("readers: %s %s (app %s): %w", c.Action, c.Role, c.AppID, err)
		}
	}
	return nil
}

// wantTenants is the full tenant list of a create or update: the plan
// holds only the differences of an update.
func wantTenants(ctx context.Context, tx pgx.Tx, c Change) ([]string, error) {
	if c.Action == ActionCreate {
		return c.Grant, nil
	}
	var have []string
	err := tx.QueryRow(ctx, "SELECT coalesce(array_agg(tenant), '{}') FROM apigee.tenant_grants WHERE role_name = $1", c.Role).Scan(&have)
	if err != nil {
		return nil, fmt.Errorf("read grants: %w", err)
	}
	out := append(missing(have, c.Revoke), c.Grant...)
	slices.Sort(out)
	return out, nil
}

// readCurrentSQL reads the roles this database's sync made, with their
// grants and members.
const readCurrentSQL = `
SELECT a.role_name, a.app_id, a.app_name,
       r.oid IS NOT NULL,
       coalesce(r.oid IN (SELECT m.member FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = 'apigee_app_reader'), false),
       coalesce(r.oid IN (SELECT m.member FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = 'apigee_reader'), false),
       coalesce((SELECT array_agg(g.tenant ORDER BY g.tenant) FROM apigee.tenant_grants g WHERE g.role_name = a.role_name), '{}'),
       coalesce((SELECT array_agg(u.rolname::text ORDER BY u.rolname) FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
                 WHERE m.roleid = r.oid), '{}')
FROM apigee.reader_apps a LEFT JOIN pg_roles r ON r.rolname = a.role_name`

func readCurrent(ctx context.Context, tx pgx.Tx) (map[string]current, error) {
	rows, err := tx.Query(ctx, readCurrentSQL)
	if err != nil {
		return nil, fmt.Errorf("readers: read roles: %w", err)
	}
	have := map[string]current{}
	var c current
	_, err = pgx.ForEachRow(rows, []any{&c.Role, &c.AppID, &c.App, &c.Exists, &c.Marked, &c.Reader, &c.Tenants, &c.Members}, func() error {
		have[c.Role] = c
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("readers: read roles: %w", err)
	}
	return have, nil
}

// check turns the listed apps into the readers wanted, refusing those with
// a bad value; refused holds the app ids whose roles must be left alone.
func (s *Service) check(ctx context.Context, tx pgx.Tx, apps []App, have map[string]current, sum *Summary) (want []Reader, refused map[string]bool, err error) {
	refused = map[string]bool{}
	refuse := func(r Reader, why string) {
		refused[r.AppID] = true
		sum.Refused = append(sum.Refused, Refusal{AppID: r.AppID, App: r.App, Role: r.Role, Reason: why})
	}
	ids := map[string]bool{}
	for _, app := range apps {
		if ids[app.ID] {
			return nil, nil, fmt.Errorf("readers: the apps list holds app %s twice", quote(app.ID))
		}
		ids[app.ID] = true
		r, isReader, why := wanted(app, s.cfg.MaxTenants)
		switch {
		case why != "":
			refuse(Reader{AppID: app.ID, App: app.Name}, why)
		case isReader && app.Status != "" && app.Status != "approved":
			// Listed although revoked: as good as gone.
		case isReader:
			want = append(want, r)
		}
	}
	// Drops of roles that lost their marker are refused too (the function
	// would raise): a person changed them, a person decides.
	for _, h := range sortedCurrent(have) {
		if h.Exists && !h.Marked {
			refuse(Reader{AppID: h.AppID, App: h.App, Role: h.Role}, "role is no longer a member of apigee_app_reader; not touched")
		}
	}
	if len(want) == 0 {
		return nil, refused, nil
	}
	if err := resolve(ctx, tx, want); err != nil {
		return nil, nil, err
	}
	return checkDB(ctx, tx, want, have, refused, refuse)
}
