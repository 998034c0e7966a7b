package ingest

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"apigee-timescale/deploy/local/standin/secretmanagertest"
	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/function"
	"apigee-timescale/shared/logging"
	"apigee-timescale/shared/privacy"
)

const (
	privacyKey = "ingest-test-key-0123456789abcdef0123456789"
	allPrivate = "client_ip=truncate,forwarded_client_ip=truncate,developer_email=hmac,identity.subject=hmac,identity.email=hmac"
	// The personal values of the test traffic: none may be found stored
	// or logged.
	clientIP  = "198.51.100.23"
	clientIP6 = "2001:db8:aaaa:bbbb::17"
	devEmail  = "carol@example.net"
	subject   = "subject-77d1"
	idEmail   = "carol.sso@example.org"
)

var personalValues = []string{clientIP, clientIP6, devEmail, subject, idEmail, "carol"}

// personal renders the personal members of a record.
func personal(ip string) []string {
	return []string{`"client_ip":"` + ip + `"`, `"developer_email":"` + devEmail + `"`,
		`"identity":{"subject":"` + subject + `","email":"` + idEmail + `","auth":"jwt"}`}
}

func privateConfig(tb testing.TB, spec string) Config {
	tb.Helper()
	cfg, err := configFrom(func(k string) string {
		return map[string]string{privacy.EnvPrivacy: spec, privacy.EnvKey: privacyKey}[k]
	})
	if err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// syncBuffer is a log destination tests read while the service writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func assertNothingPersonal(tb testing.TB, what, text string) {
	tb.Helper()
	for _, v := range personalValues {
		if strings.Contains(text, v) {
			tb.Errorf("%s holds %q:\n%s", what, v, text)
		}
	}
}

// TestPseudonymisedBeforeTheWriter: the calls the write stage hashes
// (rows_sha256) and stores already hold pseudonyms, each mode applied.
func TestPseudonymisedBeforeTheWriter(t *testing.T) {
	w := &recordingWriter{}
	s, err := NewService(privateConfig(t, allPrivate), Deps{Writer: w})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	now := time.Now().UTC()
	data := rec("p1", now, personal(clientIP)...) + "\n" + rec("p2", now, personal(clientIP6)...)
	if code := post(t, s, wrapped("ps-p", data, nil), nil); code != http.StatusNoContent {
		t.Fatalf("status %d", code)
	}
	s.Close(context.Background())
	keys, _ := privacy.ParseKeys([]byte(privacyKey))
	w.mu.Lock()
	defer w.mu.Unlock()
	var got []string
	for _, b := range w.batches {
		for _, c := range b.Calls {
			got = append(got, c.ClientIP.String(), c.DeveloperEmail, c.Identity.Subject, c.Identity.Email)
		}
	}
	want := []string{"198.51.100.0", keys.Pseudonym("tenant-a", devEmail), keys.Pseudonym("tenant-a", subject), keys.Pseudonym("tenant-a", idEmail),
		"2001:db8:aaaa::", keys.Pseudonym("tenant-a", devEmail), keys.Pseudonym("tenant-a", subject), keys.Pseudonym("tenant-a", idEmail)}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("calls handed to the writer hold\n%v\nwant\n%v", got, want)
	}
}

// TestNothingPersonalIsStoredOrLogged sends valid and invalid traffic full
// of personal values through the whole function on both databases, then
// searches every row of api_calls and ingest_rejects, and the log.
func TestNothingPersonalIsStoredOrLogged(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		logs := &syncBuffer{}
		s := newService(t, db, func(c *Config, d *Deps) {
			*c = privateConfig(t, allPrivate)
			d.Logger = logging.New(logs, slog.LevelDebug)
		})
		now := time.Now().UTC()
		attrs := map[string]string{"tenant": "tenant-a"}
		other := strings.Replace(rec("b1", now, personal(clientIP)...), `"tenant":"tenant-a"`, `"tenant":"tenant-b"`, 1)
		bodies := []string{
			wrapped("m1", rec("a1", now, personal(clientIP)...)+"\n"+rec("a2", now, personal(clientIP6)...), attrs),
			wrapped("m2", other, map[string]string{"tenant": "tenant-b"}),
			// Refused records: an address that is not one (the detail
			// quotes it), a lone surrogate in an email, not JSON.
			wrapped("m3", rec("r1", now, append(personal(clientIP+"x"), `"x":1`)...), attrs),
			wrapped("m4", rec("r2", now, `"developer_email":"`+devEmail+`\ud800"`), attrs),
			wrapped("m5", "client "+clientIP+" "+devEmail+" {", attrs),
			// A delivery refused before its records are read: the detail
			// quotes the bad publish time.
			strings.Replace(wrapped("m6", rec("r3", now, personal(clientIP)...), attrs),
				`"publishTime":"`, `"publishTime":"`+devEmail+`-`, 1),
		}
		for i, b := range bodies {
			if code := post(t, s, b, nil); code != http.StatusNoContent {
				t.Fatalf("delivery %d: status %d", i, code)
			}
		}
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := count(t, db, "SELECT count(*) FROM apigee.api_calls"); n != 3 {
			t.Fatalf("%d rows stored, want 3", n)
		}
		if n := count(t, db, "SELECT count(*) FROM apigee.ingest_rejects"); n != 4 {
			t.Fatalf("%d rejects, want 4", n)
		}
		assertNothingPersonal(t, "api_calls", dump(t, db, "SELECT t::text FROM apigee.api_calls t"))
		assertNothingPersonal(t, "ingest_rejects", dump(t, db,
			"SELECT t::text || ' ' || convert_from(payload, 'UTF8') FROM apigee.ingest_rejects t"))
		assertNothingPersonal(t, "the log", logs.String())
		if !strings.Contains(logs.String(), "personal fields are pseudonymised") {
			t.Errorf("the start-up log does not state the policy:\n%s", logs)
		}

		// Grouping still works: one pseudonym per value within a tenant,
		// another in the other tenant; the quarantine uses the same ones.
		keys, _ := privacy.ParseKeys([]byte(privacyKey))
		pa, pb := keys.Pseudonym("tenant-a", devEmail), keys.Pseudonym("tenant-b", devEmail)
		if n := count(t, db, "SELECT count(*) FROM apigee.api_calls WHERE tenant = 'tenant-a' AND developer_email = $1", pa); n != 2 {
			t.Errorf("%d tenant-a rows with pseudonym %s, want 2", n, pa)
		}
		if n := count(t, db, "SELECT count(*) FROM apigee.api_calls WHERE tenant = 'tenant-b' AND developer_email = $1", pb); n != 1 || pa == pb {
			t.Errorf("%d tenant-b rows with pseudonym %s (tenant-a's %s), want 1 and another", n, pb, pa)
		}
		if n := count(t, db, "SELECT count(*) FROM apigee.api_calls WHERE client_ip = '198.51.100.0'::inet"); n != 2 {
			t.Errorf("%d rows with the truncated address, want 2", n)
		}
		if n := count(t, db, "SELECT count(*) FROM apigee.ingest_rejects WHERE position($1::bytea IN payload) > 0", []byte(pa)); n != 1 {
			t.Errorf("%d quarantined payloads hold tenant-a's pseudonym, want 1 (the bad address)", n)
		}
		if n := count(t, db, `SELECT count(*) FROM apigee.ingest_rejects WHERE position('"withheld":{'::bytea IN payload) > 0`); n < 2 {
			t.Errorf("%d withheld payloads, want the one not JSON and the envelope", n)
		}
	})
}

func dump(tb testing.TB, db *testkit.DB, sql string) string {
	tb.Helper()
	rows, err := db.Admin.Query(context.Background(), sql)
	if err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			tb.Fatal(err)
		}
		b.WriteString(s + "\n")
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return b.String()
}

// TestPrivacyConfigRefusals: the function refuses to start on a privacy
// setting it cannot honour, naming the variable, with a 500.
func TestPrivacyConfigRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"unknown field", map[string]string{privacy.EnvPrivacy: "client_addr=truncate"}, privacy.EnvPrivacy},
		{"hmac of an inet", map[string]string{privacy.EnvPrivacy: "client_ip=hmac", privacy.EnvKey: privacyKey}, privacy.EnvPrivacy},
		{"truncate of an email", map[string]string{privacy.EnvPrivacy: "developer_email=truncate"}, privacy.EnvPrivacy},
		{"hmac without a key", map[string]string{privacy.EnvPrivacy: "identity.email=hmac"}, privacy.EnvPrivacy},
		{"short key", map[string]string{privacy.EnvPrivacy: "identity.email=hmac", privacy.EnvKey: "k"}, privacy.EnvKey},
		{"bad width", map[string]string{privacy.EnvIPv6Prefix: "200"}, privacy.EnvIPv6Prefix},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := configFrom(func(k string) string { return tc.env[k] })
			var ce *privacy.ConfigError
			if !errors.As(err, &ce) || ce.Var != tc.want {
				t.Fatalf("err = %v, want a *privacy.ConfigError naming %s", err, tc.want)
			}
			if code := function.StatusFor(err); code != http.StatusInternalServerError {
				t.Fatalf("StatusFor = %d, want 500", code)
			}
		})
	}
	cfg := privateConfig(t, allPrivate)
	cfg.Privacy.Key, cfg.Privacy.KeySecret = "", "projects/p/secrets/k"
	if _, err := NewService(cfg, Deps{Writer: &recordingWriter{}}); err == nil || !strings.Contains(err.Error(), privacy.EnvKeySecret) {
		t.Fatalf("NewService with a key secret but no Deps.Privacy: err = %v, want one naming %s", err, privacy.EnvKeySecret)
	}
}

// TestNewFromEnvReadsTheKeySecret: the deployed start-up reads the key
// from Secret Manager through the real client and pseudonymises with it.
func TestNewFromEnvReadsTheKeySecret(t *testing.T) {
	db := testkit.New(t, testkit.Postgres)
	srv, addr, err := secretmanagertest.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	secret := "projects/p/secrets/ingest-privacy-key"
	if _, err := srv.Put(secret, []byte(privacyKey)); err != nil {
		t.Fatal(err)
	}
	clearConfig(t)
	_, dsn := db.Login(t, "apigee_ingest")
	t.Setenv(dbconn.EnvDatabaseURL, dsn)
	t.Setenv(privacy.EnvPrivacy, allPrivate)
	t.Setenv(privacy.EnvKeySecret, secret)
	t.Setenv(privacy.EnvSecretManager, addr)
	ctx := context.Background()
	s, err := NewFromEnv(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code := post(t, s, wrapped("ps-s", rec("s1", time.Now(), personal(clientIP)...), nil), nil); code != http.StatusNoContent {
		t.Fatalf("status %d", code)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	keys, _ := privacy.ParseKeys([]byte(privacyKey))
	if n := count(t, db, "SELECT count(*) FROM apigee.api_calls WHERE developer_email = $1", keys.Pseudonym("tenant-a", devEmail)); n != 1 {
		t.Fatalf("%d rows with the pseudonym under the secret's key, want 1", n)
	}
	if srv.Calls("AccessSecretVersion") != 1 {
		t.Fatalf("the key secret was accessed %d times, want once", srv.Calls("AccessSecretVersion"))
	}

	t.Setenv(privacy.EnvKeySecret, "projects/p/secrets/absent")
	if _, err := NewFromEnv(ctx, nil); err == nil || !strings.Contains(err.Error(), privacy.EnvKeySecret) {
		t.Fatalf("absent secret: err = %v, want one naming %s", err, privacy.EnvKeySecret)
	}
}

// BenchmarkToDelivery measures what pseudonymisation adds to decoding and
// validating: 100 records with all four personal fields per message.
func BenchmarkToDelivery(b *testing.B) {
	now := time.Now().UTC()
	var sb strings.Builder
	for j := range 100 {
		sb.WriteString(rec("b-"+time.Duration(j).String(), now, personal(clientIP)...))
		sb.WriteByte('\n')
	}
	data := []byte(sb.String())
	for _, spec := range []string{"", allPrivate} {
		name := "off"
		if spec != "" {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			s, err := NewService(privateConfig(b, spec), Deps{Writer: &recordingWriter{}})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close(context.Background())
			b.ReportAllocs()
			for b.Loop() {
				if d := s.toDelivery(message{ID: "ps", Data: data}, len(data)); len(d.Calls) != 100 {
					b.Fatalf("%d calls", len(d.Calls))
				}
			}
			b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// Withheld input without a message id keeps a dedupe key of its own: two
// different deliveries of the same length are two rejects, one delivery
// redelivered is one, with a key and without.
func TestWithheldInputKeepsItsDedupeKey(t *testing.T) {
	for _, spec := range []string{allPrivate, "client_ip=truncate"} {
		t.Run(spec, func(t *testing.T) {
			cfg := privateConfig(t, spec)
			if !cfg.Privacy.Policy.NeedsKey() {
				cfg.Privacy.Key = ""
			}
			s, err := NewService(cfg, Deps{Writer: &recordingWriter{}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close(context.Background()) })
			key := func(data string, envelope bool) string {
				m := message{Data: []byte(data)}
				if envelope {
					m.refuse(ReasonBadEnvelope, "push envelope is not valid JSON: "+data, []byte(data))
				}
				d := s.toDelivery(m, len(data))
				if len(d.Rejects) != 1 {
					t.Fatalf("%d rejects", len(d.Rejects))
				}
				assertNothingPersonal(t, "reject", string(d.Rejects[0].Payload)+d.Rejects[0].Detail+d.Rejects[0].DedupeKey)
				return d.Rejects[0].DedupeKey
			}
			for _, envelope := range []bool{false, true} {
				a, b := key("from "+clientIP+" {", envelope), key("from "+clientIP6[:13]+" {", envelope)
				if a == b || a != key("from "+clientIP+" {", envelope) {
					t.Errorf("envelope %v: dedupe keys %s and %s", envelope, a, b)
				}
			}
		})
	}
}
