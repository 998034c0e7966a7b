package testkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// passwordChecks remembers, per server URL, whether it rejected a wrong
// password: one probe per server and test binary.
var passwordChecks sync.Map // string → error

// RequirePasswordAuth fails the test at once, with one line, unless the
// kind's server rejects a wrong password over TCP. Tests that prove an old
// or disabled credential no longer logs in depend on it: a server whose
// pg_hba.conf trusts local TCP connections (a common developer set-up)
// accepts every password, and those tests would report a wrong result for
// every credential instead of the one cause. Real servers, Cloud SQL and
// the local ones (deploy/local, scram-sha-256) all enforce passwords.
func RequirePasswordAuth(tb testing.TB, k Kind) {
	tb.Helper()
	server := ServerURL(tb, k)
	v, ok := passwordChecks.Load(server)
	if !ok {
		v, _ = passwordChecks.LoadOrStore(server, probeWrongPassword(server))
	}
	if err, _ := v.(error); err != nil {
		tb.Fatalf("testkit: %s: %v", EnvVar(k), err)
	}
}

var errTrusts = errors.New("the server accepted a wrong password: it does not enforce passwords on TCP " +
	"(pg_hba.conf trust?); use scram-sha-256, as deploy/local/*.sh and every real server do")

// probeWrongPassword logs in as the URL's user with a password it cannot
// have, and returns nil only when the server refuses it as a wrong password.
func probeWrongPassword(server string) error {
	u, err := url.Parse(server)
	if err != nil {
		return err
	}
	u.User = url.UserPassword(u.User.Username(), "wrong-"+randomHex(16))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u.String())
	if err == nil {
		conn.Close(ctx)
		return errTrusts
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) && (pg.Code == pgerrcode.InvalidPassword || pg.Code == pgerrcode.InvalidAuthorizationSpecification) {
		return nil
	}
	return errors.Join(errors.New("could not check that the server enforces passwords"), err)
}

func randomHex(n int) string {
	b := make([]byte, n/2)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}
