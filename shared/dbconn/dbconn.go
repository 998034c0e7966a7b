// Package dbconn gives every function the same pgx pool, whichever way the
// database is reached: a plain DSN, credentials in Secret Manager, or the
// Cloud SQL connector with a password or IAM database authentication.
//
// With Secret Manager credentials the pool survives rotation: new
// connections take the cached credentials, and when the database rejects
// them (SQLSTATE 28P01 or 28000) Acquire re-reads the secret once, shared by
// all concurrent callers, and retries. Connections opened before a rotation
// keep working until MaxConnLifetime retires them.
package dbconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"cloud.google.com/go/cloudsqlconn"
	secretmanager "cloud.google.com/go/secretmanager/apiv1"
	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/shared/env"
	"apigee-timescale/shared/secrets"
)

// DefaultMinRefreshInterval is the least time between two secret re-reads
// caused by authentication failures, so that a credential that is simply
// wrong does not turn every request into a Secret Manager call.
const DefaultMinRefreshInterval = 2 * time.Second

// Dialer opens connections to a Cloud SQL instance; *cloudsqlconn.Dialer
// implements it. Tests inject their own with WithDialer.
type Dialer interface {
	Dial(ctx context.Context, instance string, opts ...cloudsqlconn.DialOption) (net.Conn, error)
}

// Option adjusts Open, mostly for tests.
type Option func(*options)

type options struct {
	secretClient *secretmanager.Client
	dialer       Dialer
	minRefresh   time.Duration
}

// WithSecretClient makes Open use c instead of creating a Secret Manager
// client from Config.SecretManagerEndpoint. The caller keeps ownership of c.
func WithSecretClient(c *secretmanager.Client) Option {
	return func(o *options) { o.secretClient = c }
}

// WithDialer makes Open use d for Cloud SQL instead of creating a
// cloudsqlconn.Dialer. The caller keeps ownership of d.
func WithDialer(d Dialer) Option {
	return func(o *options) { o.dialer = d }
}

// WithMinRefreshInterval overrides DefaultMinRefreshInterval.
func WithMinRefreshInterval(d time.Duration) Option {
	return func(o *options) { o.minRefresh = d }
}

// DB is a pgx pool plus what it needs to keep connecting: the cached secret
// credentials and the Cloud SQL dialer. Safe for concurrent use.
type DB struct {
	cfg  Config
	pool *pgxpool.Pool

	sm         *secretmanager.Client // nil unless credentials come from a secret
	closeSM    bool
	closeDial  func() error
	minRefresh time.Duration

	// refreshSem serialises re-reads; a channel rather than a mutex so that
	// waiting honours the caller's context.
	refreshSem chan struct{}

	mu          sync.Mutex
	cur         connParams
	gen         uint64    // bumped by every successful re-read
	lastRefresh time.Time // of the last re-read caused by an auth failure
}

// connParams are the per-connection settings that come from the secret.
type connParams struct {
	version   string // secret version name the values came from
	host      string
	port      uint16
	database  string
	user      string
	password  string
	tlsConfig *tls.Config
	fallbacks []*pgconn.FallbackConfig
}

func (p connParams) applyTo(cc *pgconn.Config) {
	cc.Host, cc.Port, cc.Database, cc.User, cc.Password = p.host, p.port, p.database, p.user, p.password
	cc.TLSConfig = p.tlsConfig.Clone()
	cc.Fallbacks = nil
	for _, fb := range p.fallbacks {
		cc.Fallbacks = append(cc.Fallbacks, &pgconn.FallbackConfig{Host: fb.Host, Port: fb.Port, TLSConfig: fb.TLSConfig.Clone()})
	}
}

// Open builds the pool described by cfg. It reads the secret (if any) but
// does not connect: the first Acquire does. Call Close when done.
func Open(ctx context.Context, cfg Config, opts ...Option) (*DB, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(""); err != nil {
		return nil, err
	}
	o := options{minRefresh: DefaultMinRefreshInterval}
	for _, opt := range opts {
		opt(&o)
	}
	db := &DB{cfg: cfg, minRefresh: o.minRefresh, refreshSem: make(chan struct{}, 1)}
	ok := false
	defer func() {
		if !ok {
			db.Close()
		}
	}()

	var pc *pgxpool.Config
	var err error
	switch {
	case cfg.DatabaseURL != "":
		pc, err = pgxpool.ParseConfig(cfg.DatabaseURL)
		if err != nil {
			return nil, fmt.Errorf("dbconn: parse %s%s", EnvDatabaseURL, parseReason(err))
		}
	case cfg.DBSecret != "":
		if pc, err = db.openSecret(ctx, o.secretClient); err != nil {
			return nil, err
		}
	default: // Cloud SQL with IAM authentication
		if pc, err = pgxpool.ParseConfig("host=localhost port=5432 sslmode=disable"); err != nil {
			return nil, fmt.Errorf("dbconn: base config: %w", err)
		}
		pc.ConnConfig.User = cfg.DBIAMUser
		pc.ConnConfig.Database = cfg.DBName
		pc.ConnConfig.Password = "" // the connector sends an IAM token; ignore PGPASSWORD and .pgpass
	}

	if cfg.CloudSQLInstance != "" {
		if err := db.useCloudSQL(ctx, pc, o.dialer); err != nil {
			return nil, err
		}
	}

	pc.MaxConns = cfg.MaxConns
	pc.MinConns = 0 // scale-to-zero instances should not hold idle connections
	pc.MaxConnLifetime = cfg.MaxConnLifetime
	pc.MaxConnLifetimeJitter = 0 // the documented bound on old-credential connections stays exact
	pc.ConnConfig.ConnectTimeout = cfg.ConnectTimeout
	pc.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(cfg.StatementTimeout.Milliseconds(), 10)
	if cfg.ApplicationName != "" {
		pc.ConnConfig.RuntimeParams["application_name"] = cfg.ApplicationName
	}

	db.pool, err = pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("dbconn: new pool: %w", err)
	}
	ok = true
	return db, nil
}

// openSecret reads the credentials and returns a pool config whose
// BeforeConnect stamps the cached credentials onto every new connection.
func (db *DB) openSecret(ctx context.Context, client *secretmanager.Client) (*pgxpool.Config, error) {
	if client == nil {
		c, err := secrets.NewClient(ctx, db.cfg.SecretManagerEndpoint)
		if err != nil {
			return nil, fmt.Errorf("dbconn: %w", err)
		}
		client, db.closeSM = c, true
	}
	db.sm = client
	creds, version, err := secrets.Read(ctx, client, db.cfg.DBSecret)
	if err != nil {
		return nil, fmt.Errorf("dbconn: read %s: %w", EnvDBSecret, err)
	}
	params, err := db.paramsFor(creds, version)
	if err != nil {
		return nil, err
	}
	db.cur = params

	pc, err := pgxpool.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, fmt.Errorf("dbconn: base config: %w", err)
	}
	params.applyTo(&pc.ConnConfig.Config)
	pc.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
		db.mu.Lock()
		p := db.cur
		db.mu.Unlock()
		p.applyTo(&cc.Config)
		return nil
	}
	return pc, nil
}

// paramsFor turns credentials into connection settings. Direct connections
// parse a password-free DSN so that sslmode gets pgx's exact TLS/fallback
// semantics; through Cloud SQL the connector does TLS and ignores the host.
func (db *DB) paramsFor(creds secrets.DBCredentials, version string) (connParams, error) {
	p := connParams{version: version, database: creds.Database, user: creds.Username, password: creds.Password}
	if db.cfg.CloudSQLInstance != "" {
		p.host, p.port = "localhost", 5432
		return p, nil
	}
	if creds.Host == "" {
		return connParams{}, fmt.Errorf("dbconn: secret %s has no host (needed without %s)", version, EnvCloudSQLInstance)
	}
	sslmode := creds.SSLMode
	if sslmode == "" {
		sslmode = "prefer"
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(creds.Username),
		Host:     net.JoinHostPort(creds.Host, strconv.Itoa(creds.PortOrDefault())),
		Path:     "/" + creds.Database,
		RawQuery: url.Values{"sslmode": {sslmode}}.Encode(),
	}
	cc, err := pgconn.ParseConfig(u.String())
	if err != nil {
		return connParams{}, fmt.Errorf("dbconn: credentials in %s: %w", version, err)
	}
	p.host, p.port, p.tlsConfig, p.fallbacks = cc.Host, cc.Port, cc.TLSConfig, cc.Fallbacks
	return p, nil
}

// DialerOptions are the options of every Cloud SQL dialer of the
// functions, then extra: lazy refresh (a function's CPU is throttled
// between requests, so no background refresh), and on Cloud Run the
// compute platform of the connector's metrics, which cloudsqlconn would
// detect from K_SERVICE, cleared by shared/function at start.
func DialerOptions(extra ...cloudsqlconn.Option) []cloudsqlconn.Option {
	opts := []cloudsqlconn.Option{cloudsqlconn.WithLazyRefresh()}
	if env.CloudRunService() != "" {
		opts = append(opts, cloudsqlconn.WithComputePlatform(cloudsqlconn.ComputePlatformCloudRun))
	}
	return append(opts, extra...)
}

func (db *DB) useCloudSQL(ctx context.Context, pc *pgxpool.Config, d Dialer) error {
	if d == nil {
		dopts := DialerOptions()
		if db.cfg.DBIAMUser != "" {
			dopts = append(dopts, cloudsqlconn.WithIAMAuthN())
		}
		cd, err := cloudsqlconn.NewDialer(ctx, dopts...)
		if err != nil {
			return fmt.Errorf("dbconn: cloud sql dialer: %w", err)
		}
		d, db.closeDial = cd, cd.Close
	}
	instance := db.cfg.CloudSQLInstance
	var dialOpts []cloudsqlconn.DialOption
	if db.cfg.CloudSQLPrivateIP {
		dialOpts = append(dialOpts, cloudsqlconn.WithPrivateIP())
	}
	cc := pc.ConnConfig
	cc.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
		return d.Dial(ctx, instance, dialOpts...)
	}
	// The host is a placeholder: skip DNS, which could also yield several
	// addresses and so several dials per connection.
	cc.LookupFunc = func(_ context.Context, host string) ([]string, error) { return []string{host}, nil }
	cc.TLSConfig, cc.Fallbacks = nil, nil
	return nil
}

// Pool returns the underlying pool. Work done through it directly does not
// get the re-read-and-retry on authentication failure; use Acquire or Do.
func (db *DB) Pool() *pgxpool.Pool { return db.pool }

// CredentialsVersion is the secret version the current credentials came
// from, or "" when the database is not configured through a secret.
func (db *DB) CredentialsVersion() string {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.cur.version
}

// Acquire returns a connection from the pool. If opening a new connection
// fails authentication and the credentials come from a secret, the secret is
// re-read (once for all concurrent callers, and at most once per
// DefaultMinRefreshInterval) and the acquire retried once.
func (db *DB) Acquire(ctx context.Context) (*pgxpool.Conn, error) {
	db.mu.Lock()
	gen := db.gen
	db.mu.Unlock()

	conn, err := db.pool.Acquire(ctx)
	if err == nil {
		return conn, nil
	}
	if db.cfg.CloudSQLInstance != "" {
		// pgx reports the placeholder host; name the real target.
		err = fmt.Errorf("cloud sql instance %s: %w", db.cfg.CloudSQLInstance, err)
	}
	if db.sm == nil || !IsAuthError(err) {
		return nil, fmt.Errorf("dbconn: acquire: %w", err)
	}
	refreshed, rerr := db.refresh(ctx, gen)
	if rerr != nil {
		return nil, fmt.Errorf("dbconn: acquire: %w; re-reading %s after the authentication failure also failed: %w", err, db.cfg.DBSecret, rerr)
	}
	if !refreshed {
		return nil, fmt.Errorf("dbconn: acquire with credentials from %s (re-read too recently to try again): %w", db.CredentialsVersion(), err)
	}
	conn, err = db.pool.Acquire(ctx)
	if err != nil {
		if db.cfg.CloudSQLInstance != "" {
			err = fmt.Errorf("cloud sql instance %s: %w", db.cfg.CloudSQLInstance, err)
		}
		return nil, fmt.Errorf("dbconn: acquire with credentials re-read from %s: %w", db.CredentialsVersion(), err)
	}
	return conn, nil
}

// refresh re-reads the secret unless another caller did so after seenGen
// was current. It reports whether there are credentials newer than seenGen
// to retry with.
func (db *DB) refresh(ctx context.Context, seenGen uint64) (bool, error) {
	select {
	case db.refreshSem <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-db.refreshSem }()

	db.mu.Lock()
	gen, last := db.gen, db.lastRefresh
	db.mu.Unlock()
	if gen != seenGen {
		return true, nil
	}
	if !last.IsZero() && time.Since(last) < db.minRefresh {
		return false, nil
	}

	creds, version, err := secrets.Read(ctx, db.sm, db.cfg.DBSecret)
	var params connParams
	if err == nil {
		params, err = db.paramsFor(creds, version)
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if err != nil && ctx.Err() != nil {
		// This caller gave up; that says nothing about the secret, so leave
		// the next caller free to read it.
		return false, err
	}
	db.lastRefresh = time.Now()
	if err != nil {
		return false, err
	}
	db.cur = params
	db.gen++
	return true, nil
}

// Do runs fn with a connection from Acquire and releases it afterwards.
func (db *DB) Do(ctx context.Context, fn func(ctx context.Context, conn *pgxpool.Conn) error) error {
	conn, err := db.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	return fn(ctx, conn)
}

// Ping checks that a connection can be acquired and used.
func (db *DB) Ping(ctx context.Context) error {
	return db.Do(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		if err := conn.Ping(ctx); err != nil {
			return fmt.Errorf("dbconn: ping: %w", err)
		}
		return nil
	})
}

// Close closes the pool, then the dialer and Secret Manager client Open
// created (injected ones are left to their owner). The pool goes first so
// that the connector sees its connections close.
func (db *DB) Close() {
	if db.pool != nil {
		db.pool.Close()
	}
	if db.closeDial != nil {
		_ = db.closeDial()
	}
	if db.closeSM && db.sm != nil {
		_ = db.sm.Close()
	}
}

// IsAuthError reports whether err, however wrapped (pgconn connect errors
// included), carries a PostgreSQL authentication failure: invalid_password
// (28P01) or invalid_authorization_specification (28000, e.g. unknown role
// or no pg_hba.conf entry).
func IsAuthError(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	return pgErr.Code == pgerrcode.InvalidPassword || pgErr.Code == pgerrcode.InvalidAuthorizationSpecification
}
