package stack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/migrations"
)

// Database is one database with the project's schema applied.
type Database struct {
	Name string
	// URL connects to it as the server's superuser (or the migrating role).
	URL string
	// Admin is a pool on URL.
	Admin *pgxpool.Pool
	// server is the superuser URL of the server, set when this package
	// created the database (and so may drop it).
	server string
}

// CreateDatabase creates database name on the server at serverURL (a
// superuser URL), dropping a previous one of that name first, applies the
// migrations and opens an admin pool.
func CreateDatabase(ctx context.Context, serverURL, name string) (*Database, error) {
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return nil, fmt.Errorf("stack: connect to the server: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	id := pgx.Identifier{name}.Sanitize()
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+id+" WITH (FORCE)"); err != nil {
		return nil, fmt.Errorf("stack: drop database %s: %w", name, err)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+id); err != nil {
		return nil, fmt.Errorf("stack: create database %s: %w", name, err)
	}
	dbURL, err := WithDatabase(serverURL, name)
	if err != nil {
		return nil, err
	}
	d, err := OpenDatabase(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	d.server = serverURL
	return d, nil
}

// OpenDatabase migrates an existing database (an admin URL: migrations
// create roles and objects) and opens an admin pool on it.
func OpenDatabase(ctx context.Context, adminURL string) (*Database, error) {
	if _, err := migrations.Up(ctx, adminURL, migrations.Options{}); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	pool, err := pgxpool.New(ctx, adminURL)
	if err != nil {
		return nil, fmt.Errorf("stack: admin pool: %w", err)
	}
	u, _ := url.Parse(adminURL)
	return &Database{Name: strings.TrimPrefix(u.Path, "/"), URL: adminURL, Admin: pool}, nil
}

// Close closes the admin pool and, when CreateDatabase made the database,
// drops it.
func (d *Database) Close(ctx context.Context) error {
	d.Admin.Close()
	if d.server == "" {
		return nil
	}
	conn, err := pgx.Connect(ctx, d.server)
	if err != nil {
		return fmt.Errorf("stack: drop %s: %w", d.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{d.Name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("stack: drop %s: %w", d.Name, err)
	}
	return nil
}

// Login creates (or re-passwords) login role with password as a member of
// groups and returns a URL connecting as it to this database. Roles are
// cluster-wide: name them per run.
func (d *Database) Login(ctx context.Context, role, password string, groups ...string) (string, error) {
	id := pgx.Identifier{role}.Sanitize()
	var exists bool
	if err := d.Admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
		return "", fmt.Errorf("stack: login %s: %w", role, err)
	}
	verb := "CREATE"
	if exists {
		verb = "ALTER"
	}
	// Identifiers and the password literal are quoted by pgx; DDL takes no
	// parameters.
	stmt := fmt.Sprintf("%s ROLE %s LOGIN PASSWORD %s VALID UNTIL 'infinity'", verb, id, quoteLiteral(password))
	if _, err := d.Admin.Exec(ctx, stmt); err != nil {
		return "", fmt.Errorf("stack: login %s: %w", role, err)
	}
	for _, g := range groups {
		if _, err := d.Admin.Exec(ctx, "GRANT "+pgx.Identifier{g}.Sanitize()+" TO "+id); err != nil {
			return "", fmt.Errorf("stack: grant %s to %s: %w", g, role, err)
		}
	}
	return WithUser(d.URL, role, password)
}

// DropRole drops a login role made by Login, ending its sessions first.
func (d *Database) DropRole(ctx context.Context, role string) error {
	id := pgx.Identifier{role}.Sanitize()
	_, _ = d.Admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
	if _, err := d.Admin.Exec(ctx, "DROP OWNED BY "+id); err != nil {
		return fmt.Errorf("stack: drop role %s: %w", role, err)
	}
	if _, err := d.Admin.Exec(ctx, "DROP ROLE IF EXISTS "+id); err != nil {
		return fmt.Errorf("stack: drop role %s: %w", role, err)
	}
	return nil
}

// Count runs a query returning one integer.
func (d *Database) Count(ctx context.Context, sql string, args ...any) (int64, error) {
	var n int64
	if err := d.Admin.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("stack: %s: %w", sql, err)
	}
	return n, nil
}

// WaitCount polls a count query until it reaches want or ctx is done, and
// returns the last value.
func (d *Database) WaitCount(ctx context.Context, want int64, sql string, args ...any) (int64, error) {
	for {
		n, err := d.Count(ctx, sql, args...)
		if err == nil && n >= want {
			return n, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return n, fmt.Errorf("stack: waiting for %d from %q, have %d: %w", want, sql, n, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WithDatabase returns serverURL with its database replaced.
func WithDatabase(serverURL, name string) (string, error) {
	u, err := url.Parse(serverURL)
	if err != nil {
		return "", fmt.Errorf("stack: parse database url: %w", err)
	}
	u.Path = "/" + name
	return u.String(), nil
}

// WithUser returns dsn with its user and password replaced.
func WithUser(dsn, user, password string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", fmt.Errorf("stack: parse database url: %w", err)
	}
	u.User = url.UserPassword(user, password)
	return u.String(), nil
}

// RandomSuffix returns n random bytes in hex, for names and passwords.
func RandomSuffix(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
