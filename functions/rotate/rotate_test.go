package rotate_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/secretmanager/apiv1/secretmanagerpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"apigee-timescale/deploy/local/standin/pushauthtest"
	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/functions/rotate"
	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/pushauth"
)

// TestAlternation: each run re-passwords the login the newest version does
// not use, with VALID UNTIL now + TTL; after two rotations the oldest
// password no longer logs in, the newest two do.
func TestAlternation(t *testing.T) {
	for _, kind := range testkit.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, kind)
			ctx := context.Background()
			var logins []string
			for i := range 4 {
				before := time.Now()
				sum := f.rotate(t)
				logins = append(logins, sum.RotatedLogin)
				want := fmt.Sprintf("%s/versions/%d", f.secret, i+1)
				if sum.NewVersion != want {
					t.Fatalf("run %d added %s, want %s", i+1, sum.NewVersion, want)
				}
				if i > 0 && sum.PreviousVersion != fmt.Sprintf("%s/versions/%d", f.secret, i) {
					t.Fatalf("run %d: previous version %s", i+1, sum.PreviousVersion)
				}
				var validUntil time.Time
				if err := f.db.Admin.QueryRow(ctx, "SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", sum.RotatedLogin).Scan(&validUntil); err != nil {
					t.Fatal(err)
				}
				if sum.ValidUntil == nil || !validUntil.Equal(*sum.ValidUntil) ||
					validUntil.Before(before.Add(time.Hour-2*time.Second)) || validUntil.After(time.Now().Add(time.Hour)) {
					t.Fatalf("run %d: VALID UNTIL %v (summary %v), want about now + 1h", i+1, validUntil, sum.ValidUntil)
				}
				var wantDisabled []string
				if i >= 2 {
					wantDisabled = []string{fmt.Sprintf("%s/versions/%d", f.secret, i-1)}
				}
				if !slices.Equal(sum.DisabledVersions, wantDisabled) {
					t.Fatalf("run %d disabled %v, want %v", i+1, sum.DisabledVersions, wantDisabled)
				}
				f.checkConsistent(t)
			}
			if want := []string{f.loginA, f.loginB, f.loginA, f.loginB}; !slices.Equal(logins, want) {
				t.Fatalf("rotated %v, want %v", logins, want)
			}
			// The rotator's role may do nothing else with the logins.
			conn, err := f.rotDB.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Release()
			_, err = conn.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD 'x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x-x'", f.loginA))
			if err == nil || !strings.Contains(err.Error(), "42501") {
				t.Fatalf("apigee_rotate altered a login directly: %v", err)
			}
		})
	}
}

var errCrash = errors.New("injected crash")

// TestCrashAfterEachStep stops a run after each step, as a crash would; the
// newest version must still log in at that moment, and the next normal run
// must leave everything consistent. Secret Manager failures are included.
func TestCrashAfterEachStep(t *testing.T) {
	for _, kind := range testkit.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, kind)
			f.rotate(t)
			f.rotate(t)
			cases := []struct {
				name    string
				inject  func()
				step    string
				newWins bool // whether the failed run's version became the newest
			}{
				{name: "after create", inject: crashAt(f, "create"), step: rotate.StepCreate},
				{name: "after set", inject: crashAt(f, "set"), step: rotate.StepSet},
				{name: "after test", inject: crashAt(f, "test"), step: rotate.StepTest},
				{name: "after add, before disabling", inject: crashAt(f, "add"), step: rotate.StepFinish, newWins: true},
				{name: "list fails", inject: func() { f.sm.FailNext("ListSecretVersions", status.Error(codes.Unavailable, "injected")) }, step: rotate.StepInspect},
				{name: "access fails", inject: func() { f.sm.FailNext("AccessSecretVersion", status.Error(codes.PermissionDenied, "injected")) }, step: rotate.StepInspect},
				{name: "add fails", inject: func() { f.sm.FailNext("AddSecretVersion", status.Error(codes.Unavailable, "injected")) }, step: rotate.StepFinish},
				{name: "disable fails", inject: func() { f.sm.FailNext("DisableSecretVersion", status.Error(codes.Unavailable, "injected")) }, step: rotate.StepFinish, newWins: true},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					before := f.versions(t)[0].GetName()
					tc.inject()
					code, sum := f.post(t, f.svc, "", scheduler)
					rotate.SetAfterStep(f.svc, nil)
					if code != http.StatusInternalServerError || sum.Status != rotate.StatusFailed || sum.FailedStep != tc.step {
						t.Fatalf("answer %d %+v, want 500 failed at %s", code, sum, tc.step)
					}
					if !strings.Contains(sum.Error, "injected") {
						t.Fatalf("error %q does not say what failed", sum.Error)
					}
					newest := f.checkNewestWorks(t)
					if got := newest.GetName() != before; got != tc.newWins || (tc.newWins && sum.NewVersion != newest.GetName()) {
						t.Fatalf("newest is %s (was %s, summary %s); want the failed run's version newest: %v", newest.GetName(), before, sum.NewVersion, tc.newWins)
					}
					next := f.rotate(t)
					if next.PreviousVersion != newest.GetName() {
						t.Fatalf("next run took over from %s, want %s", next.PreviousVersion, newest.GetName())
					}
					f.checkConsistent(t)
				})
			}
		})
	}
}

func crashAt(f *fixture, point string) func() {
	return func() {
		rotate.SetAfterStep(f.svc, func(p string) error {
			if p == point {
				return errCrash
			}
			return nil
		})
	}
}

// TestConcurrentInvocations: runs that overlap rotate once; the others
// answer 200 "skipped".
func TestConcurrentInvocations(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testkit.TimescaleDB)
	f.rotate(t)
	for round := range 2 {
		before := len(f.versions(t))
		// Hold the winner inside the run long enough for every other request
		// to have started.
		rotate.SetAfterStep(f.svc, func(p string) error {
			if p == "set" {
				time.Sleep(300 * time.Millisecond)
			}
			return nil
		})
		const n = 8
		var wg sync.WaitGroup
		start := make(chan struct{})
		statuses := make(chan rotate.Summary, n)
		for range n {
			wg.Go(func() {
				<-start
				code, sum := f.post(t, f.svc, "", scheduler)
				if code != http.StatusOK {
					t.Errorf("answer %d %+v", code, sum)
				}
				statuses <- sum
			})
		}
		close(start)
		wg.Wait()
		close(statuses)
		rotate.SetAfterStep(f.svc, nil)
		count := map[string]int{}
		for s := range statuses {
			count[s.Status]++
			if s.Status == rotate.StatusSkipped && s.Reason == "" {
				t.Errorf("skipped without a reason: %+v", s)
			}
		}
		if count[rotate.StatusRotated] != 1 || count[rotate.StatusSkipped] != n-1 {
			t.Fatalf("round %d: statuses %v, want 1 rotated and %d skipped", round, count, n-1)
		}
		if got := len(f.versions(t)); got != before+1 {
			t.Fatalf("round %d: %d versions, want %d", round, got, before+1)
		}
		f.checkConsistent(t)
	}
}

// TestMinInterval: a run soon after the last rotation only tidies up.
func TestMinInterval(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testkit.TimescaleDB)
	slow := f.newService(t, func(c *rotate.Config) { c.MinInterval, c.TTL = time.Hour, 2*time.Hour }, nil)
	// An empty secret is rotated whatever the interval.
	if code, sum := f.post(t, slow, "", scheduler); code != http.StatusOK || sum.Status != rotate.StatusRotated {
		t.Fatalf("first run: %d %+v", code, sum)
	}
	code, sum := f.post(t, slow, "", scheduler)
	if code != http.StatusOK || sum.Status != rotate.StatusSkipped || !strings.Contains(sum.Reason, rotate.EnvMinInterval) {
		t.Fatalf("second run: %d %+v, want skipped for %s", code, sum, rotate.EnvMinInterval)
	}
	// A run that stopped after adding its version left three enabled; the
	// skipped run finishes its work.
	f.rotate(t)
	crashAt(f, "add")()
	if code, _ := f.post(t, f.svc, "", scheduler); code != http.StatusInternalServerError {
		t.Fatalf("crash run answered %d", code)
	}
	rotate.SetAfterStep(f.svc, nil)
	code, sum = f.post(t, slow, "", scheduler)
	if code != http.StatusOK || sum.Status != rotate.StatusSkipped || !slices.Equal(sum.DisabledVersions, []string{f.secret + "/versions/1"}) {
		t.Fatalf("tidy run: %d %+v, want skipped with versions/1 disabled", code, sum)
	}
	f.checkConsistent(t)
	if n := len(f.versions(t)); n != 3 {
		t.Fatalf("%d versions, want 3", n)
	}
}

// TestRepairsDisabledNewest: if someone disables the newest version,
// consumers cannot read the secret; the next run adds a working one and
// re-passwords the login that is not in the newest usable version.
func TestRepairsDisabledNewest(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testkit.Postgres)
	ctx := context.Background()
	f.rotate(t)
	f.rotate(t) // v1 = A, v2 = B
	if _, err := f.client.DisableSecretVersion(ctx, &secretmanagerpb.DisableSecretVersionRequest{Name: f.secret + "/versions/2"}); err != nil {
		t.Fatal(err)
	}
	sum := f.rotate(t)
	if sum.PreviousVersion != f.secret+"/versions/1" || sum.RotatedLogin != f.loginB {
		t.Fatalf("repair run %+v: want previous versions/1 and login %s", sum, f.loginB)
	}
	f.checkNewestWorks(t)
	if err := f.login(ctx, f.creds(t, f.secret+"/versions/1")); err != nil {
		t.Fatalf("versions/1 (%s), still in use, stopped working: %v", f.loginA, err)
	}
	f.rotate(t)
	f.checkConsistent(t)
}

// TestNotifications: SECRET_ROTATE for this secret rotates; everything else
// a topic may carry is acknowledged and ignored.
func TestNotifications(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testkit.TimescaleDB)
	f.rotate(t)
	cases := []struct {
		name   string
		body   string
		code   int
		status string
	}{
		{"SECRET_ROTATE, project by number", wrapped("m1", `{"name":"x"}`, map[string]string{"eventType": "SECRET_ROTATE", "secretId": "projects/123456/secrets/ingest-db"}), 200, rotate.StatusRotated},
		{"SECRET_ROTATE without secretId", wrapped("m2", "", map[string]string{"eventType": "SECRET_ROTATE"}), 200, rotate.StatusRotated},
		{"SECRET_VERSION_ADD", wrapped("m3", "", map[string]string{"eventType": "SECRET_VERSION_ADD", "secretId": f.secret}), 200, rotate.StatusIgnored},
		{"SECRET_UPDATE", wrapped("m4", "", map[string]string{"eventType": "SECRET_UPDATE", "secretId": f.secret}), 200, rotate.StatusIgnored},
		{"SECRET_ROTATE for another secret", wrapped("m5", "", map[string]string{"eventType": "SECRET_ROTATE", "secretId": "projects/123456/secrets/other"}), 200, rotate.StatusIgnored},
		{"envelope without eventType", wrapped("m6", "hello", nil), 200, rotate.StatusIgnored},
		{"scheduler with a body", `{"job":"nightly"}`, 200, rotate.StatusRotated},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.versions(t))
			code, sum := f.post(t, f.svc, tc.body, nil)
			if code != tc.code || sum.Status != tc.status {
				t.Fatalf("answer %d %+v, want %d %s", code, sum, tc.code, tc.status)
			}
			added := len(f.versions(t)) - before
			if want := map[bool]int{true: 1, false: 0}[tc.status == rotate.StatusRotated]; added != want {
				t.Fatalf("%d versions added, want %d", added, want)
			}
			if tc.status == rotate.StatusIgnored && sum.Reason == "" {
				t.Fatal("ignored without a reason")
			}
			f.checkConsistent(t)
		})
	}
	t.Run("GET", func(t *testing.T) {
		w := httptest.NewRecorder()
		f.svc.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
		if w.Code != http.StatusMethodNotAllowed {
			t.Fatalf("GET answered %d", w.Code)
		}
	})
}

// TestAuthentication: with an audience configured, only a valid token from
// the configured service account gets a rotation.
func TestAuthentication(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testkit.TimescaleDB)
	const aud, sa = "https://rotate.example.run.app", "scheduler@test-project.iam.gserviceaccount.com"
	signer := pushauthtest.NewSigner(t)
	v, err := pushauth.NewVerifier(context.Background(), pushauth.Config{Audience: aud, ServiceAccount: sa, HTTPClient: signer.HTTPClient()})
	if err != nil {
		t.Fatal(err)
	}
	svc := f.newService(t, func(c *rotate.Config) { c.Audience, c.ServiceAccount = aud, sa }, func(d *rotate.Deps) { d.Verifier = v })
	other := pushauthtest.NewSigner(t)
	bearer := func(tok string) map[string]string {
		return map[string]string{"Authorization": "Bearer " + tok, "X-CloudScheduler": "true"}
	}
	cases := []struct {
		name string
		hdr  map[string]string
		code int
	}{
		{"no token", scheduler, http.StatusUnauthorized},
		{"garbage token", bearer("not.a.token"), http.StatusUnauthorized},
		{"unknown signer", bearer(other.IDToken(t, aud, sa, time.Hour)), http.StatusUnauthorized},
		{"wrong audience", bearer(signer.IDToken(t, "https://elsewhere", sa, time.Hour)), http.StatusUnauthorized},
		{"wrong service account", bearer(signer.IDToken(t, aud, "intruder@x.iam.gserviceaccount.com", time.Hour)), http.StatusUnauthorized},
		{"expired", bearer(signer.IDToken(t, aud, sa, -time.Hour)), http.StatusUnauthorized},
		{"valid", bearer(signer.IDToken(t, aud, sa, time.Hour)), http.StatusOK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.versions(t))
			code, sum := f.post(t, svc, "", tc.hdr)
			if code != tc.code {
				t.Fatalf("answer %d %+v, want %d", code, sum, tc.code)
			}
			added := len(f.versions(t)) - before
			if tc.code == http.StatusOK {
				if sum.Status != rotate.StatusRotated || added != 1 {
					t.Fatalf("valid token: %+v, %d versions added", sum, added)
				}
				return
			}
			if added != 0 || sum.Error != "unauthenticated" {
				t.Fatalf("refused call added %d versions, answered %+v", added, sum)
			}
		})
	}
}

// TestErrorsAreScrubbed: should a driver or server message ever quote the
// password, the answer and the log show it redacted.
func TestErrorsAreScrubbed(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testkit.TimescaleDB)
	rotate.SetAfterStep(f.svc, func(p string) error {
		if p != "test" {
			return nil
		}
		f.mu.Lock()
		pw := f.passwords[len(f.passwords)-1]
		f.mu.Unlock()
		return fmt.Errorf("server said: password %q is wrong", pw)
	})
	code, sum := f.post(t, f.svc, "", scheduler)
	rotate.SetAfterStep(f.svc, nil)
	if code != http.StatusInternalServerError || sum.FailedStep != rotate.StepTest || !strings.Contains(sum.Error, "[redacted]") {
		t.Fatalf("answer %d %+v, want a failure at test with the password redacted", code, sum)
	}
	if !strings.Contains(f.logs.String(), "[redacted]") {
		t.Fatal("the failure was not logged")
	}
	// checkNoLeaks (at cleanup) proves the password is absent from both.
}

// TestCloudSQLTestLogin: with CloudSQLInstance set, the new credentials are
// tested through the dialer (injected here; no network), and the secret
// needs no host.
func TestCloudSQLTestLogin(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testkit.Postgres)
	d := &fakeDialer{addr: net.JoinHostPort(f.host, f.port)}
	svc := f.newService(t, func(c *rotate.Config) {
		c.CloudSQLInstance, c.Host = "test-project:europe-west1:apigee", ""
	}, func(deps *rotate.Deps) { deps.Dialer = d })
	for range 2 {
		if code, sum := f.post(t, svc, "", scheduler); code != http.StatusOK || sum.Status != rotate.StatusRotated {
			t.Fatalf("answer %d %+v", code, sum)
		}
	}
	d.mu.Lock()
	seen := slices.Clone(d.seen)
	d.mu.Unlock()
	if len(seen) != 2 || seen[0] != "test-project:europe-west1:apigee" {
		t.Fatalf("dialer saw %v, want one dial per run to the instance", seen)
	}
	if c := f.creds(t, f.versions(t)[0].GetName()); c.Host != "" {
		t.Fatalf("new version has host %q, want none", c.Host)
	}
	f.checkConsistent(t)

	if _, err := rotate.NewService(rotate.Config{Secret: f.secret, Database: "d", CloudSQLInstance: "p:r:i"}, rotate.Deps{DB: f.rotDB, Secrets: f.client}); err == nil {
		t.Fatal("NewService accepted a Cloud SQL instance without a dialer")
	}
}

// TestPasswordNeverSentToServer taps every byte between the rotator and
// the database, its own connection and its test logins: the server gets
// the verifier, never a password.
func TestPasswordNeverSentToServer(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testkit.Postgres)
	tap := newTapProxy(t, net.JoinHostPort(f.host, f.port))
	_, rotDSN := f.db.Login(t, "apigee_rotate")
	u, err := url.Parse(rotDSN)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = tap.addr
	rotDB, err := dbconn.Open(context.Background(), dbconn.Config{DatabaseURL: u.String()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rotDB.Close)
	host, port, _ := net.SplitHostPort(tap.addr)
	svc := f.newService(t, func(c *rotate.Config) {
		c.Host = host
		fmt.Sscan(port, &c.Port)
	}, func(d *rotate.Deps) { d.DB = rotDB })
	for range 2 {
		if code, sum := f.post(t, svc, "", scheduler); code != http.StatusOK || sum.Status != rotate.StatusRotated {
			t.Fatalf("answer %d %+v", code, sum)
		}
	}
	rotDB.Close()
	seen := tap.seen.String()
	if strings.Count(seen, "SCRAM-SHA-256$4096:") < 2 {
		t.Fatalf("the tap saw no verifiers in %d bytes: it does not see the rotator's traffic", len(seen))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.passwords) != 2 {
		t.Fatalf("%d passwords generated, want 2", len(f.passwords))
	}
	for _, p := range f.passwords {
		if strings.Contains(seen, p) {
			t.Fatal("a password went over the wire to the database")
		}
	}
}
