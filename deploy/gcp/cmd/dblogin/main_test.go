package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/secrets"
)

func TestParseRejects(t *testing.T) {
	ok := []string{"-login", "x_login", "-group", "apigee_rollup", "-database", "apigee", "-out", "f"}
	tests := []struct {
		name string
		args []string
	}{
		{"no login", []string{"-group", "apigee_rollup", "-database", "d", "-out", "f"}},
		{"quoted login", append([]string{"-login", `a"b`}, ok[2:]...)},
		{"login is a group role", append([]string{"-login", "apigee_rollup"}, ok[2:]...)},
		{"owner group", []string{"-login", "x", "-group", "apigee_owner", "-database", "d", "-out", "f"}},
		{"superuser group", []string{"-login", "x", "-group", "postgres", "-database", "d", "-out", "f"}},
		{"no out", ok[:6]},
		{"no database", []string{"-login", "x", "-group", "apigee_rollup", "-out", "f"}},
		{"bad sslmode", append(append([]string{}, ok...), "-sslmode", "maybe")},
		{"negative validity", append(append([]string{}, ok...), "-valid-for", "-1h")},
		{"stray argument", append(append([]string{}, ok...), "extra")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := parse(tt.args, &bytes.Buffer{}); err == nil {
				t.Fatalf("parse(%q) accepted", tt.args)
			}
		})
	}
	if _, err := parse(ok, &bytes.Buffer{}); err != nil {
		t.Fatalf("parse(%q): %v", ok, err)
	}
}

func TestRun(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		testkit.RequirePasswordAuth(t, db.Kind) // the old password must stop working
		ctx := context.Background()
		login := "t_dblogin_" + randomHex(t)
		t.Cleanup(func() {
			_, _ = db.Admin.Exec(context.Background(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", login)
			_, _ = db.Admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+pgx.Identifier{login}.Sanitize())
		})
		dir := t.TempDir()
		u, err := url.Parse(db.URL)
		if err != nil {
			t.Fatal(err)
		}
		args := func(out string, extra ...string) []string {
			return append([]string{"-login", login, "-group", "apigee_rollup", "-host", u.Hostname(), "-port", u.Port(),
				"-database", strings.TrimPrefix(u.Path, "/"), "-sslmode", "disable", "-out", out}, extra...)
		}

		first := filepath.Join(dir, "first.json")
		var stderr bytes.Buffer
		if err := run(ctx, args(first), db.URL, &stderr); err != nil {
			t.Fatalf("run: %v", err)
		}
		c1 := readCreds(t, first)
		if c1.Username != login || c1.Host != u.Hostname() || c1.Database != db.Name || c1.SSLMode != "disable" || len(c1.Password) < 40 {
			t.Fatalf("credentials %+v do not describe the login", c1)
		}
		if strings.Contains(stderr.String(), c1.Password) {
			t.Fatal("the password was written to stderr")
		}
		conn := connectAs(t, c1)
		var member bool
		if err := conn.QueryRow(ctx, "SELECT pg_has_role(current_user, 'apigee_rollup', 'MEMBER')").Scan(&member); err != nil || !member {
			t.Fatalf("the login is not a member of apigee_rollup (err %v)", err)
		}
		var stored string
		var forever bool
		if err := db.Admin.QueryRow(ctx, "SELECT rolpassword, coalesce(rolvaliduntil = 'infinity', true) FROM pg_authid WHERE rolname = $1",
			login).Scan(&stored, &forever); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(stored, "SCRAM-SHA-256$4096:") || strings.Contains(stored, c1.Password) {
			t.Fatalf("stored password %q is not a SCRAM verifier", stored)
		}
		if !forever {
			t.Fatal("a login without -valid-for expires")
		}

		// A second run re-passwords the existing login: the old password
		// stops working, the new one works, with the expiry asked for.
		second := filepath.Join(dir, "second.json")
		if err := run(ctx, args(second, "-valid-for", "1h"), db.URL, &bytes.Buffer{}); err != nil {
			t.Fatalf("second run: %v", err)
		}
		c2 := readCreds(t, second)
		if c2.Password == c1.Password {
			t.Fatal("the second run reused the password")
		}
		connectAs(t, c2)
		if _, err := pgx.Connect(ctx, dsn(c1)); err == nil {
			t.Fatal("the replaced password still logs in")
		}
		var until *time.Time
		if err := db.Admin.QueryRow(ctx, "SELECT rolvaliduntil FROM pg_authid WHERE rolname = $1", login).Scan(&until); err != nil {
			t.Fatal(err)
		}
		if until == nil || until.Before(time.Now().Add(55*time.Minute)) || until.After(time.Now().Add(65*time.Minute)) {
			t.Fatalf("VALID UNTIL %v, want about an hour from now", until)
		}

		// An existing -out file is refused before anything changes.
		if err := run(ctx, args(second), db.URL, &bytes.Buffer{}); err == nil {
			t.Fatal("run overwrote an existing -out")
		}
		connectAs(t, c2)

		// A bad owner URL fails without quoting it.
		bad := "postgres://owner:" + c2.Password + "@127.0.0.1:1/x?sslmode=nonsense"
		err = run(ctx, args(filepath.Join(dir, "third.json")), bad, &bytes.Buffer{})
		if err == nil || strings.Contains(err.Error(), c2.Password) {
			t.Fatalf("bad DATABASE_URL: err %v (must fail without the password)", err)
		}
	})
}

func readCreds(t *testing.T, path string) secrets.DBCredentials {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %v, want 0600", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c secrets.DBCredentials
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("credentials are not DBCredentials JSON: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

func dsn(c secrets.DBCredentials) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(c.Username, c.Password),
		Host: c.Host + ":" + strconv.Itoa(c.PortOrDefault()), Path: "/" + c.Database, RawQuery: "sslmode=" + c.SSLMode}
	return u.String()
}

func connectAs(t *testing.T, c secrets.DBCredentials) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn(c))
	if err != nil {
		t.Fatalf("log in as %s: %v", c.Username, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func randomHex(t *testing.T) string {
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
