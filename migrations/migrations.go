// Package migrations holds the database schema as versioned SQL files,
// embedded in the binary and applied with goose.
//
// The schema is the project's public contract (schema apigee, its tables,
// roles and policies): see the comments at the top of each file in sql/.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
)

//go:embed sql/*.sql
var files embed.FS

// versionTable is goose's bookkeeping table. It lives in public, not in the
// apigee schema, because goose creates it before the first migration has
// created that schema; the apigee_ prefix keeps it apart from other tools'
// tables there.
const versionTable = "public.apigee_schema_migrations"

// Options tune how migrations are applied.
type Options struct {
	// Storage forces the raw tables' storage: "timescaledb" or "partitioned".
	// Empty (the default) detects TimescaleDB and falls back to partitioning.
	Storage string
}

// Open connects to databaseURL for migrating. The connection carries the
// apigee.storage setting that migration 2 reads.
func Open(databaseURL string, opts Options) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("migrations: parse database url: %w", err)
	}
	switch opts.Storage {
	case "", "timescaledb", "partitioned":
	default:
		return nil, fmt.Errorf("migrations: storage must be timescaledb, partitioned or empty, not %q", opts.Storage)
	}
	if opts.Storage != "" {
		cfg.RuntimeParams["apigee.storage"] = opts.Storage
	}
	// Migrations and the timestamps they compute are in UTC whatever the
	// server's default.
	cfg.RuntimeParams["timezone"] = "UTC"
	return stdlib.OpenDB(*cfg), nil
}

// NewProvider returns a goose provider over the embedded migrations.
func NewProvider(db *sql.DB) (*goose.Provider, error) {
	sub, err := fs.Sub(files, "sql")
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub, goose.WithTableName(versionTable))
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return p, nil
}

// Up applies every pending migration and returns how many it applied.
// A second call applies nothing.
func Up(ctx context.Context, databaseURL string, opts Options) (int, error) {
	db, err := Open(databaseURL, opts)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	p, err := NewProvider(db)
	if err != nil {
		return 0, err
	}
	res, err := p.Up(ctx)
	if err != nil {
		return len(res), fmt.Errorf("migrations: up: %w", err)
	}
	return len(res), nil
}
