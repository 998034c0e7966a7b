// Command dblogin gives a database login a fresh random password and writes
// the credentials, as the JSON the functions read from Secret Manager
// (shared/secrets.DBCredentials), to a new file. deploy/gcp/deploy.sh runs
// it as the database owner to fill each function's credential secret:
//
//	DATABASE_URL=postgres://owner@... dblogin -login apigee_rollup_login -group apigee_rollup \
//	    -host 10.0.0.5 -port 5432 -database apigee -sslmode require -out /private/dir/creds.json
//
// The login is created if it does not exist, made a member of -group (one of
// the project's NOLOGIN group roles), and its password set. The password is
// sent as a SCRAM-SHA-256 verifier, so it never reaches the server's
// statement log; it is written only to -out (mode 0600, which must not
// exist), never to stdout, stderr or an argument.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/shared/scram"
	"apigee-timescale/shared/secrets"
)

// groups are the roles a login made here may join (migrations/sql/00001).
var groups = map[string]bool{
	"apigee_ingest": true,
	"apigee_rollup": true,
	"apigee_rotate": true,
	"apigee_reader": true,
}

// loginRe keeps login names to plain unquoted identifiers.
var loginRe = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Getenv("DATABASE_URL"), os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "dblogin:", err)
		os.Exit(1)
	}
}

// options are the command-line flags.
type options struct {
	login, group, out   string
	host, database, ssl string
	port                int
	validFor            time.Duration
}

func parse(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("dblogin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.login, "login", "", "login role to create or re-password (required)")
	fs.StringVar(&o.group, "group", "", "group role the login joins: apigee_ingest, apigee_rollup, apigee_rotate or apigee_reader (required)")
	fs.StringVar(&o.out, "out", "", "file to write the credentials JSON to; must not exist (required)")
	fs.StringVar(&o.host, "host", "", "host written into the credentials (as the functions reach the database)")
	fs.IntVar(&o.port, "port", 5432, "port written into the credentials")
	fs.StringVar(&o.database, "database", "", "database written into the credentials (required)")
	fs.StringVar(&o.ssl, "sslmode", "", "libpq sslmode written into the credentials")
	fs.DurationVar(&o.validFor, "valid-for", 0, "password lifetime (VALID UNTIL now + this); 0: no expiry")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	switch {
	case fs.NArg() > 0:
		return options{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	case !loginRe.MatchString(o.login):
		return options{}, fmt.Errorf("-login %q is not a lowercase identifier", o.login)
	case groups[o.login]:
		return options{}, fmt.Errorf("-login %q is a group role, not a login", o.login)
	case !groups[o.group]:
		return options{}, fmt.Errorf("-group %q is not one of apigee_ingest, apigee_rollup, apigee_rotate, apigee_reader", o.group)
	case o.out == "":
		return options{}, errors.New("-out is required")
	case o.validFor < 0:
		return options{}, errors.New("-valid-for must not be negative")
	}
	creds := secrets.DBCredentials{Username: o.login, Password: "x", Host: o.host, Port: o.port, Database: o.database, SSLMode: o.ssl}
	if err := creds.Validate(); err != nil {
		return options{}, err
	}
	return o, nil
}

func run(ctx context.Context, args []string, databaseURL string, stderr io.Writer) error {
	o, err := parse(args, stderr)
	if err != nil {
		return err
	}
	if databaseURL == "" {
		return errors.New("DATABASE_URL (the owner's connection) is not set")
	}
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		// A parse error quotes the URL, password included when the redaction
		// misses it.
		return errors.New("DATABASE_URL is not a valid PostgreSQL connection string (value not shown)")
	}
	password, err := scram.NewPassword()
	if err != nil {
		return err
	}
	verifier, err := scram.Verifier(password)
	if err != nil {
		return err
	}
	payload, err := json.Marshal(secrets.DBCredentials{
		Username: o.login, Password: password, Host: o.host, Port: o.port, Database: o.database, SSLMode: o.ssl,
	})
	if err != nil {
		return fmt.Errorf("encode credentials: %w", err)
	}
	// The file is created before the password is set: a password nobody can
	// read would lock the login out.
	f, err := os.OpenFile(o.out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create -out: %w", err)
	}
	if err := setPassword(ctx, cfg, o, verifier); err != nil {
		f.Close()
		os.Remove(o.out)
		return err
	}
	if _, err := f.Write(payload); err != nil {
		f.Close()
		return fmt.Errorf("write -out: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write -out: %w", err)
	}
	fmt.Fprintf(stderr, "dblogin: %s (member of %s) has a new password\n", o.login, o.group)
	return nil
}

// setPassword creates the login if needed, grants the group and sets the
// verifier, in one transaction.
func setPassword(ctx context.Context, cfg *pgx.ConnConfig, o options, verifier string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// Connect errors name the user and database, not the password.
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect as the owner: %w", err)
	}
	defer conn.Close(context.Background())
	login := pgx.Identifier{o.login}.Sanitize()
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", o.login).Scan(&exists); err != nil {
			return fmt.Errorf("look up %s: %w", o.login, err)
		}
		if !exists {
			if _, err := tx.Exec(ctx, "CREATE ROLE "+login+" LOGIN"); err != nil {
				return fmt.Errorf("create %s: %w", o.login, err)
			}
		}
		if _, err := tx.Exec(ctx, "GRANT "+pgx.Identifier{o.group}.Sanitize()+" TO "+login); err != nil {
			return fmt.Errorf("grant %s to %s: %w", o.group, o.login, err)
		}
		// ALTER ROLE takes no parameters; the verifier is base64 and '$'
		// only, and the expiry a formatted timestamp, so quoting is safe.
		stmt := "ALTER ROLE " + login + " LOGIN PASSWORD '" + verifier + "'"
		if o.validFor > 0 {
			stmt += " VALID UNTIL '" + time.Now().Add(o.validFor).UTC().Format(time.RFC3339) + "'"
		} else {
			stmt += " VALID UNTIL 'infinity'"
		}
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("set the password of %s: %w", o.login, err)
		}
		return nil
	})
}
