// Command migrate applies the embedded schema migrations to DATABASE_URL.
//
//	migrate up       apply every pending migration (a second run does nothing),
//	                 then print "connections available: N", what ordinary roles
//	                 may open (deploy/gcp/deploy.sh sizes the pools against it)
//	migrate status   list migrations and when each was applied
//	migrate version  print the current schema version
//
// APIGEE_STORAGE=timescaledb|partitioned overrides storage detection on the
// first run.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"apigee-timescale/migrations"
)

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		slog.New(slog.NewJSONHandler(os.Stderr, nil)).Error("migrate failed", "err", err)
		os.Exit(1)
	}
}

// availableSQL is the connections roles without superuser (or
// pg_use_reserved_connections, PostgreSQL 16+) may open: the functions'
// pools must fit in it.
const availableSQL = `SELECT current_setting('max_connections')::int
	- current_setting('superuser_reserved_connections')::int
	- coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0)`

func run(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: migrate up|status|version")
	}
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		return fmt.Errorf("DATABASE_URL is not set")
	}
	db, err := migrations.Open(url, migrations.Options{Storage: os.Getenv("APIGEE_STORAGE")})
	if err != nil {
		return err
	}
	defer db.Close()
	p, err := migrations.NewProvider(db)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	switch args[0] {
	case "up":
		res, err := p.Up(ctx)
		for _, r := range res {
			fmt.Printf("applied %s (%s)\n", r.Source.Path, r.Duration.Round(time.Millisecond))
		}
		if err != nil {
			return fmt.Errorf("up: %w", err)
		}
		if len(res) == 0 {
			fmt.Println("nothing to apply")
		}
		var n int
		if err := db.QueryRowContext(ctx, availableSQL).Scan(&n); err != nil {
			return fmt.Errorf("up: read max_connections: %w", err)
		}
		fmt.Printf("connections available: %d\n", n)
	case "status":
		st, err := p.Status(ctx)
		if err != nil {
			return fmt.Errorf("status: %w", err)
		}
		for _, s := range st {
			when := "pending"
			if !s.AppliedAt.IsZero() {
				when = s.AppliedAt.UTC().Format(time.RFC3339)
			}
			fmt.Printf("%-8s %-45s %s\n", s.State, s.Source.Path, when)
		}
	case "version":
		v, err := p.GetDBVersion(ctx)
		if err != nil {
			return fmt.Errorf("version: %w", err)
		}
		fmt.Println(v)
	default:
		return fmt.Errorf("unknown command %q: usage: migrate up|status|version", args[0])
	}
	return nil
}
