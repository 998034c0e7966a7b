// Package rotate is the function that rotates the ingest functions' database
// credentials in Secret Manager without downtime.
//
// Strategy: alternating users. Two login roles, apigee_ingest_a and
// apigee_ingest_b, are both members of apigee_ingest. The secret's newest
// version holds the credentials of one of them; each run re-passwords the
// other one and makes it the newest version, so the credential that running
// instances use keeps working until the run after. A run goes:
//
//   - inspect: list the secret's versions; the newest enabled, readable one
//     ("current") names the login in use and the connection fields;
//   - lock: a session advisory lock on the rotator's own connection, so that
//     concurrent runs do one rotation (the others answer "skipped");
//   - create: a password of 32 bytes from crypto/rand and its SCRAM-SHA-256
//     verifier;
//   - set: apigee.set_login_password(other login, verifier, now + TTL), the
//     SECURITY DEFINER function the apigee_rotate group may call;
//   - test: log in as the other login with the new password (directly, or
//     through the Cloud SQL connector) and check it is in apigee_ingest;
//   - finish: check that the newest version is still the one inspected (name
//     and etag), add the new version, check that it is the newest, then
//     disable every enabled version older than the previous one, each with
//     its etag.
//
// The new version is added only after its credentials logged in, and the
// login re-passworded is never the one in the newest usable version, so at
// every moment the newest version logs in. A crash anywhere leaves either
// the old newest version (still working; the other login merely has a
// password nobody knows) or the new one (tested) plus older versions still
// enabled, which the next run disables. "versions/latest" is the newest
// version whatever its state, so nothing here ever disables the newest one.
//
// Passwords never leave the run except in the new secret version: errors
// and summaries are scrubbed of them, and the database only sees verifiers.
package rotate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/cloudsqlconn"
	secretmanager "cloud.google.com/go/secretmanager/apiv1"
	"cloud.google.com/go/secretmanager/apiv1/secretmanagerpb"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/api/iterator"

	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/pushauth"
	"apigee-timescale/shared/scram"
	"apigee-timescale/shared/secrets"
)

// The login roles rotated and the group they must belong to, as created by
// migration 00001 and accepted by apigee.set_login_password.
const (
	LoginA      = "apigee_ingest_a"
	LoginB      = "apigee_ingest_b"
	IngestGroup = "apigee_ingest"
)

// Steps of a run, as Summary.FailedStep names them.
const (
	StepInspect = "inspect"
	StepLock    = "lock"
	StepCreate  = "create"
	StepSet     = "set"
	StepTest    = "test"
	StepFinish  = "finish"
)

// Summary.Status values.
const (
	StatusRotated = "rotated"
	// StatusSkipped: another run holds the lock, rotated since this one
	// started, or rotated less than MinInterval ago.
	StatusSkipped = "skipped"
	// StatusIgnored: a Pub/Sub notification other than SECRET_ROTATE for
	// this secret.
	StatusIgnored = "ignored"
	StatusFailed  = "failed"
)

// lockKey is the advisory lock every run takes ("apigrota"). Advisory locks
// are per database while roles are per cluster: run one rotator per cluster.
const lockKey int64 = 0x61706967726f7461

// setPasswordSQL calls the SECURITY DEFINER function of migration 00003.
const setPasswordSQL = "SELECT apigee.set_login_password($1, $2, $3)"

// Conns hands out the rotator's own connections (a login in the
// apigee_rotate group); *dbconn.DB is one.
type Conns interface {
	Acquire(ctx context.Context) (*pgxpool.Conn, error)
}

// Verifier checks a request's OIDC token; *pushauth.Verifier is one.
type Verifier interface {
	Verify(ctx context.Context, r *http.Request) (pushauth.Claims, error)
}

// Deps are the service's collaborators, made by the caller so that tests
// and the local stack can supply their own.
type Deps struct {
	// DB is the rotator's own database access, as apigee_rotate.
	DB Conns
	// Secrets reaches Secret Manager.
	Secrets *secretmanager.Client
	// Dialer reaches Config.CloudSQLInstance for test logins; required when
	// it is set. *cloudsqlconn.Dialer is one (without IAM authentication:
	// the rotated logins use passwords).
	Dialer dbconn.Dialer
	// Verifier, when nil, turns caller authentication off.
	Verifier Verifier
	// Logger is used by ServeHTTP only; default: discard.
	Logger *slog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
}

// Summary describes a run. It never holds a password.
type Summary struct {
	Status  string `json:"status"`
	Secret  string `json:"secret"`
	Trigger string `json:"trigger,omitempty"`
	// Reason says why a run was skipped or ignored.
	Reason string `json:"reason,omitempty"`
	// RotatedLogin was given a new password (also when a later step failed).
	RotatedLogin string `json:"rotated_login,omitempty"`
	// ValidUntil is the new password's expiry.
	ValidUntil *time.Time `json:"valid_until,omitempty"`
	// PreviousVersion is the version consumers used before the run.
	PreviousVersion string `json:"previous_version,omitempty"`
	// NewVersion holds the new credentials.
	NewVersion       string   `json:"new_version,omitempty"`
	DisabledVersions []string `json:"disabled_versions"`
	FailedStep       string   `json:"failed_step,omitempty"`
	Error            string   `json:"error,omitempty"`
	DurationMS       int64    `json:"duration_ms"`
}

// StepError is the error of a failed run: the step and why.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return "rotate: " + e.Step + ": " + e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// Service runs rotations; ServeHTTP is its HTTP face. Safe for concurrent
// use.
type Service struct {
	cfg      Config
	db       Conns
	sm       *secretmanager.Client
	dialer   dbconn.Dialer
	verifier Verifier
	log      *slog.Logger
	now      func() time.Time
	closers  []func()

	// Seams for tests (export_test.go): roles are cluster-wide, so tests
	// rotate their own pair of logins rather than the production one.
	logins      [2]string
	genPassword func() (string, error)
	afterStep   func(step string) error
}

// NewService checks cfg (DB is not used: d.DB is) and returns a Service.
func NewService(cfg Config, d Deps) (*Service, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("rotate: %w", err)
	}
	switch {
	case d.DB == nil:
		return nil, errors.New("rotate: no database")
	case d.Secrets == nil:
		return nil, errors.New("rotate: no Secret Manager client")
	case cfg.CloudSQLInstance != "" && d.Dialer == nil:
		return nil, errors.New("rotate: CloudSQLInstance needs a Dialer")
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return &Service{
		cfg: cfg, db: d.DB, sm: d.Secrets, dialer: d.Dialer, verifier: d.Verifier, log: d.Logger, now: d.Now,
		logins:      [2]string{LoginA, LoginB},
		genPassword: scram.NewPassword,
	}, nil
}

// Close releases what NewFromEnv opened; a Service from NewService owns
// nothing.
func (s *Service) Close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}

// Rotate runs one rotation. It returns a *StepError on failure, with the
// summary of what was done before it; a skipped run is not an error.
func (s *Service) Rotate(ctx context.Context, trigger string) (Summary, error) {
	start := s.now()
	sum := Summary{Status: StatusFailed, Secret: s.cfg.Secret, Trigger: trigger, DisabledVersions: []string{}}
	r := &run{Service: s, sum: &sum}
	err := r.do(ctx)
	sum.DurationMS = s.now().Sub(start).Milliseconds()
	if err != nil {
		se := r.scrub(err)
		sum.Status, sum.FailedStep, sum.Error = StatusFailed, se.Step, se.Error()
		return sum, se
	}
	return sum, nil
}

// run is the state of one Rotate call.
type run struct {
	*Service
	sum *Summary
	// password and verifier of this run, scrubbed from errors.
	password, verifier string
}

// versionInfo is one secret version, newest first in a listing.
type versionInfo struct {
	pb  *secretmanagerpb.SecretVersion
	num int64
}

// state is what inspect found.
type state struct {
	versions []versionInfo // newest first
	// current is the newest enabled version whose payload decodes; creds
	// are its credentials. Both zero when there is none.
	current versionInfo
	creds   secrets.DBCredentials
}

func (st state) newest() versionInfo {
	if len(st.versions) == 0 {
		return versionInfo{}
	}
	return st.versions[0]
}

func (r *run) do(ctx context.Context) error {
	// What this invocation set out to rotate: if the newest version differs
	// once the lock is ours, a concurrent run has done the work.
	seen, err := r.listVersions(ctx)
	if err != nil {
		return &StepError{StepInspect, err}
	}

	conn, err := r.db.Acquire(ctx)
	if err != nil {
		return &StepError{StepLock, err}
	}
	defer conn.Release()
	var locked bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", lockKey).Scan(&locked); err != nil {
		return &StepError{StepLock, fmt.Errorf("advisory lock: %w", err)}
	}
	if !locked {
		r.sum.Status, r.sum.Reason = StatusSkipped, "another rotation is running (advisory lock held)"
		return nil
	}
	defer unlock(conn)

	st, err := r.inspect(ctx)
	if err != nil {
		return &StepError{StepInspect, err}
	}
	if skip, err := r.skip(ctx, st, seen); skip || err != nil {
		return err
	}
	r.sum.PreviousVersion = st.current.pb.GetName()
	return r.rotate(ctx, conn, st)
}

// skip reports whether this run has nothing to rotate: a concurrent run
// added a version since seen was listed, or the newest version is younger
// than MinInterval (then it only finishes what an interrupted run left).
func (r *run) skip(ctx context.Context, st state, seen []versionInfo) (bool, error) {
	newest, seenName := st.newest(), ""
	if len(seen) > 0 {
		seenName = seen[0].pb.GetName()
	}
	if newest.pb.GetName() != seenName {
		r.sum.Status = StatusSkipped
		r.sum.Reason = fmt.Sprintf("%s was added after this run started: a concurrent run rotated", newest.pb.GetName())
		return true, nil
	}
	if r.cfg.MinInterval <= 0 || st.current.pb == nil || st.current.num != newest.num {
		return false, nil
	}
	age := r.now().Sub(newest.pb.GetCreateTime().AsTime())
	if age >= r.cfg.MinInterval {
		return false, nil
	}
	// Still finish what a run that stopped after adding its version left
	// undone.
	disabled, err := r.disableOlder(ctx, newest.num)
	r.sum.DisabledVersions = disabled
	if err != nil {
		return true, &StepError{StepFinish, err}
	}
	r.sum.Status, r.sum.PreviousVersion = StatusSkipped, newest.pb.GetName()
	r.sum.Reason = fmt.Sprintf("newest version is %s old, less than %s=%s", age.Round(time.Second), EnvMinInterval, r.cfg.MinInterval)
	return true, nil
}

// rotate runs the steps create, set, test and finish on the login that is
// not in use, with the test hook after each (crash tests stop there).
func (r *run) rotate(ctx context.Context, conn *pgxpool.Conn, st state) error {
	target := r.target(st.creds.Username)
	var err error
	if r.password, err = r.genPassword(); err != nil {
		return &StepError{StepCreate, err}
	}
	if r.verifier, err = scram.Verifier(r.password); err != nil {
		return &StepError{StepCreate, err}
	}
	creds, err := r.newCredentials(st.creds, target)
	if err != nil {
		return &StepError{StepCreate, err}
	}
	if err := r.hook(StepCreate, StepCreate); err != nil {
		return err
	}

	validUntil := r.now().Add(r.cfg.TTL).UTC().Truncate(time.Second)
	if _, err := conn.Exec(ctx, setPasswordSQL, target, r.verifier, validUntil); err != nil {
		return &StepError{StepSet, fmt.Errorf("set password of %s: %w", target, err)}
	}
	r.sum.RotatedLogin, r.sum.ValidUntil = target, &validUntil
	if err := r.hook(StepSet, StepSet); err != nil {
		return err
	}

	if err := r.testLogin(ctx, creds); err != nil {
		return &StepError{StepTest, err}
	}
	if err := r.hook(StepTest, StepTest); err != nil {
		return err
	}

	if err := r.finish(ctx, st.newest(), creds); err != nil {
		var se *StepError
		if errors.As(err, &se) {
			return err
		}
		return &StepError{StepFinish, err}
	}
	r.sum.Status = StatusRotated
	return nil
}

// finish promotes creds to the newest version and retires older versions.
func (r *run) finish(ctx context.Context, inspected versionInfo, creds secrets.DBCredentials) error {
	// AddSecretVersion takes no etag; the closest guard is to re-check the
	// newest version's name and etag right before adding. Under the lock
	// only a writer other than the rotator can have changed it.
	now, err := r.listVersions(ctx)
	if err != nil {
		return err
	}
	var cur versionInfo
	if len(now) > 0 {
		cur = now[0]
	}
	if cur.pb.GetName() != inspected.pb.GetName() || cur.pb.GetEtag() != inspected.pb.GetEtag() {
		return fmt.Errorf("the secret changed during the run (newest version %s, etag %s; inspected %s, etag %s): not adding",
			cur.pb.GetName(), cur.pb.GetEtag(), inspected.pb.GetName(), inspected.pb.GetEtag())
	}
	payload, err := json.Marshal(creds)
	if err != nil {
		return fmt.Errorf("encode credentials: %w", err)
	}
	sum := int64(crc32.Checksum(payload, crc32.MakeTable(crc32.Castagnoli)))
	v, err := r.sm.AddSecretVersion(ctx, &secretmanagerpb.AddSecretVersionRequest{
		Parent:  r.cfg.Secret,
		Payload: &secretmanagerpb.SecretPayload{Data: payload, DataCrc32C: &sum},
	})
	if err != nil {
		return fmt.Errorf("add version: %w", err)
	}
	r.sum.NewVersion = v.GetName()
	if err := r.hook("add", StepFinish); err != nil {
		return err
	}
	num, err := versionNumber(v.GetName())
	if err != nil {
		return err
	}
	// A version added by someone else after ours would be the one consumers
	// read: say so, and leave older versions alone.
	after, err := r.listVersions(ctx)
	if err != nil {
		return fmt.Errorf("after adding %s: %w", v.GetName(), err)
	}
	if len(after) == 0 {
		return fmt.Errorf("added %s, but the secret lists no versions", v.GetName())
	}
	if after[0].num != num {
		return fmt.Errorf("added %s, but %s is newer: another writer added a version", v.GetName(), after[0].pb.GetName())
	}
	disabled, err := r.disableOlder(ctx, num)
	r.sum.DisabledVersions = disabled
	return err
}

// disableOlder disables every enabled version older than the newest enabled
// version before keep: keep is what consumers read now, the one before it
// what instances that have not re-read yet use. Each disable carries the
// etag just listed, so a version changed meanwhile is left alone.
func (r *run) disableOlder(ctx context.Context, keep int64) ([]string, error) {
	disabled := []string{}
	vs, err := r.listVersions(ctx)
	if err != nil {
		return disabled, err
	}
	var errs []error
	previousSeen := false
	for _, v := range vs {
		if v.num >= keep || v.pb.GetState() != secretmanagerpb.SecretVersion_ENABLED {
			continue
		}
		if !previousSeen {
			previousSeen = true
			continue
		}
		_, err := r.sm.DisableSecretVersion(ctx, &secretmanagerpb.DisableSecretVersionRequest{Name: v.pb.GetName(), Etag: v.pb.GetEtag()})
		if err != nil {
			errs = append(errs, fmt.Errorf("disable %s: %w", v.pb.GetName(), err))
			continue
		}
		disabled = append(disabled, v.pb.GetName())
	}
	return disabled, errors.Join(errs...)
}

func (r *run) hook(point, step string) error {
	if r.afterStep == nil {
		return nil
	}
	if err := r.afterStep(point); err != nil {
		return &StepError{step, err}
	}
	return nil
}

// target is the login to re-password: never the one the current version
// uses.
func (r *run) target(current string) string {
	if current == r.logins[0] {
		return r.logins[1]
	}
	return r.logins[0]
}

// newCredentials builds the new version's payload: configured connection
// fields first, else those of the current version.
func (r *run) newCredentials(cur secrets.DBCredentials, login string) (secrets.DBCredentials, error) {
	pick := func(cfg, old string) string {
		if cfg != "" {
			return cfg
		}
		return old
	}
	c := secrets.DBCredentials{
		Username: login,
		Password: r.password,
		Host:     pick(r.cfg.Host, cur.Host),
		Port:     r.cfg.Port,
		Database: pick(r.cfg.Database, cur.Database),
		SSLMode:  pick(r.cfg.SSLMode, cur.SSLMode),
	}
	if c.Port == 0 {
		c.Port = cur.PortOrDefault()
	}
	if c.Database == "" {
		return secrets.DBCredentials{}, fmt.Errorf("no database name: the secret has no readable version to copy it from; set %s", EnvDBName)
	}
	if c.Host == "" && r.cfg.CloudSQLInstance == "" {
		return secrets.DBCredentials{}, fmt.Errorf("no host: the secret has no readable version to copy it from; set %s", EnvDBHost)
	}
	if err := c.Validate(); err != nil {
		return secrets.DBCredentials{}, err
	}
	return c, nil
}

// testLogin logs in with c the way consumers do and checks the login can do
// ingest's work.
func (r *run) testLogin(ctx context.Context, c secrets.DBCredentials) error {
	cc, err := r.connConfig(c)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return fmt.Errorf("log in as %s: %w", c.Username, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var user string
	var member bool
	if err := conn.QueryRow(ctx, "SELECT current_user::text, pg_has_role(current_user, $1, 'MEMBER')", IngestGroup).Scan(&user, &member); err != nil {
		return fmt.Errorf("query as %s: %w", c.Username, err)
	}
	if user != c.Username || !member {
		return fmt.Errorf("logged in as %s, member of %s: %v; want %s, a member", user, IngestGroup, member, c.Username)
	}
	return nil
}

// connConfig mirrors shared/dbconn: a password-free DSN for pgx's sslmode
// semantics, or the Cloud SQL connector with the host as a placeholder.
func (r *run) connConfig(c secrets.DBCredentials) (*pgx.ConnConfig, error) {
	host, sslmode := c.Host, c.SSLMode
	if r.cfg.CloudSQLInstance != "" {
		host, sslmode = "localhost", "disable" // the connector does TLS
	}
	if sslmode == "" {
		sslmode = "prefer"
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(c.Username),
		Host:     net.JoinHostPort(host, strconv.Itoa(c.PortOrDefault())),
		Path:     "/" + c.Database,
		RawQuery: url.Values{"sslmode": {sslmode}, "connect_timeout": {"10"}}.Encode(),
	}
	cc, err := pgx.ParseConfig(u.String())
	if err != nil {
		return nil, fmt.Errorf("connection settings for %s: %w", c.Username, err)
	}
	cc.Password = c.Password
	cc.RuntimeParams["application_name"] = "apigee-rotate-test"
	if r.cfg.CloudSQLInstance != "" {
		instance, d := r.cfg.CloudSQLInstance, r.dialer
		var opts []cloudsqlconn.DialOption
		if r.cfg.CloudSQLPrivateIP {
			opts = append(opts, cloudsqlconn.WithPrivateIP())
		}
		cc.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) { return d.Dial(ctx, instance, opts...) }
		cc.LookupFunc = func(_ context.Context, host string) ([]string, error) { return []string{host}, nil }
		cc.TLSConfig, cc.Fallbacks = nil, nil
	}
	return cc, nil
}

// inspect lists the versions and decodes the newest enabled one that
// decodes. Versions that do not decode are skipped (consumers cannot use
// them either); failing to reach Secret Manager is an error, never a reason
// to guess which login is in use.
func (r *run) inspect(ctx context.Context) (state, error) {
	vs, err := r.listVersions(ctx)
	if err != nil {
		return state{}, err
	}
	st := state{versions: vs}
	for _, v := range vs {
		if v.pb.GetState() != secretmanagerpb.SecretVersion_ENABLED {
			continue
		}
		resp, err := r.sm.AccessSecretVersion(ctx, &secretmanagerpb.AccessSecretVersionRequest{Name: v.pb.GetName()})
		if err != nil {
			return state{}, fmt.Errorf("access %s: %w", v.pb.GetName(), err)
		}
		data := resp.GetPayload().GetData()
		if want := resp.GetPayload().DataCrc32C; want != nil && uint32(*want) != crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)) {
			return state{}, fmt.Errorf("access %s: payload does not match its CRC32C", v.pb.GetName())
		}
		creds, err := secrets.Parse(data)
		if err != nil {
			continue
		}
		st.current, st.creds = v, creds
		break
	}
	return st, nil
}

// listVersions returns every version of the secret, newest first.
func (r *run) listVersions(ctx context.Context) ([]versionInfo, error) {
	it := r.sm.ListSecretVersions(ctx, &secretmanagerpb.ListSecretVersionsRequest{Parent: r.cfg.Secret})
	var out []versionInfo
	for {
		v, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list versions of %s: %w", r.cfg.Secret, err)
		}
		n, err := versionNumber(v.GetName())
		if err != nil {
			return nil, err
		}
		out = append(out, versionInfo{pb: v, num: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].num > out[j].num })
	return out, nil
}

func versionNumber(name string) (int64, error) {
	i := strings.LastIndex(name, "/versions/")
	if i < 0 {
		return 0, fmt.Errorf("version name %q has no /versions/", name)
	}
	n, err := strconv.ParseInt(name[i+len("/versions/"):], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("version name %q does not end in a number", name)
	}
	return n, nil
}

// unlock releases the advisory lock; if that fails, the connection is closed
// so that the session, and the lock with it, ends.
func unlock(conn *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", lockKey); err != nil {
		_ = conn.Conn().Close(ctx)
	}
}

// scrub turns err into a *StepError whose text holds neither the password
// nor its verifier. Nothing in this package puts them in errors; this
// guards against a driver or server message that would.
func (r *run) scrub(err error) *StepError {
	se, ok := err.(*StepError)
	if !ok {
		se = &StepError{StepInspect, err}
	}
	msg := se.Err.Error()
	clean := msg
	for _, s := range []string{r.password, r.verifier} {
		if s != "" {
			clean = strings.ReplaceAll(clean, s, "[redacted]")
		}
	}
	if clean != msg {
		return &StepError{se.Step, errors.New(clean)}
	}
	return se
}
