package privacy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"apigee-timescale/deploy/local/standin/secretmanagertest"
	"apigee-timescale/shared/env"
	"apigee-timescale/shared/record"
)

const testKey = "0123456789abcdef0123456789abcdef-test-key"

// Personal values every test looks for where they must not be.
const (
	ip      = "203.0.113.7"
	ip6     = "2001:db8:1234:5678::9"
	email   = "alice@example.com"
	subject = "user-8c1f1e"
	idEmail = "alice.sso@example.org"
)

func mustPolicy(tb testing.TB, spec string) Policy {
	tb.Helper()
	p, err := ParsePolicy(spec)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func newTest(tb testing.TB, spec string) *Pseudonymiser {
	tb.Helper()
	keys, err := ParseKeys([]byte(testKey))
	if err != nil {
		tb.Fatal(err)
	}
	p, err := New(mustPolicy(tb, spec), keys)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func personalRecord(tenant string) record.Record {
	return record.Record{
		Tenant:            tenant,
		ClientIP:          netip.MustParseAddr(ip),
		ForwardedClientIP: netip.MustParseAddr(ip),
		DeveloperEmail:    email,
		Identity:          record.Identity{Subject: subject, Email: idEmail, Issuer: "https://issuer.example"},
	}
}

// TestHandledMatchesFieldTable: Record must know every field the table
// marks personal, or a new one would be stored in clear.
func TestHandledMatchesFieldTable(t *testing.T) {
	var table []string
	for _, f := range PersonalFields() {
		table = append(table, f.Key)
	}
	if !slices.Equal(table, handled) {
		t.Fatalf("the field table's personal fields are %v, Record handles %v", table, handled)
	}
}

func TestParsePolicy(t *testing.T) {
	for _, tc := range []struct {
		spec    string
		want    map[string]Mode
		wantErr string
	}{
		{spec: "", want: map[string]Mode{}},
		{spec: "client_ip=truncate, developer_email=hmac,identity.subject=hmac,identity.email=hmac",
			want: map[string]Mode{"client_ip": Truncate, "developer_email": HMAC, "identity.subject": HMAC, "identity.email": HMAC}},
		{spec: "client_ip=drop,identity.email=drop,developer_email=keep",
			want: map[string]Mode{"client_ip": Drop, "identity.email": Drop, "developer_email": Keep}},
		{spec: "client_ip=hmac", wantErr: "client_ip cannot be hmac: its column is inet"},
		{spec: "developer_email=truncate", wantErr: "developer_email cannot be truncate"},
		{spec: "identity.subject=truncate", wantErr: "identity.subject cannot be truncate"},
		{spec: "email=hmac", wantErr: `"email" is not a personal field`},
		{spec: "useragent=hmac", wantErr: `"useragent" is not a personal field`},
		{spec: "client_ip=blur", wantErr: `unknown mode "blur"`},
		{spec: "client_ip", wantErr: `"client_ip" is not field=mode`},
		{spec: "client_ip=drop,client_ip=truncate", wantErr: "client_ip is named twice"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			p, err := ParsePolicy(tc.spec)
			if tc.wantErr != "" {
				var ce *ConfigError
				if !errors.As(err, &ce) || ce.Var != EnvPrivacy || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want a *ConfigError for %s containing %q", err, EnvPrivacy, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for k, m := range tc.want {
				if p.Mode(k) != m {
					t.Errorf("mode of %s = %v, want %v", k, p.Mode(k), m)
				}
			}
			if len(p.Modes) != len(tc.want) {
				t.Errorf("modes %v, want %v", p.Modes, tc.want)
			}
		})
	}
}

// TestConfigErrorsNameTheVariable: every refusal names the variable to fix.
func TestConfigErrorsNameTheVariable(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"hmac without key", map[string]string{EnvPrivacy: "developer_email=hmac"}, EnvPrivacy},
		{"unknown field", map[string]string{EnvPrivacy: "client_address=drop"}, EnvPrivacy},
		{"both keys", map[string]string{EnvKey: testKey, EnvKeySecret: "projects/p/secrets/k"}, EnvKey},
		{"short key", map[string]string{EnvKey: "short"}, EnvKey},
		{"bad secret", map[string]string{EnvKeySecret: "privacy-key"}, EnvKeySecret},
		{"ipv4 width", map[string]string{EnvIPv4Prefix: "33"}, EnvIPv4Prefix},
		{"ipv6 width", map[string]string{EnvIPv6Prefix: "129"}, EnvIPv6Prefix},
		{"negative width", map[string]string{EnvIPv4Prefix: "-1"}, EnvIPv4Prefix},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := env.Map(tc.env)
			ConfigFrom(r)
			err := r.Err()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one naming %s", err, tc.want)
			}
			var ce *ConfigError
			var pe *env.ParseError
			if !errors.As(err, &ce) && !errors.As(err, &pe) {
				t.Fatalf("err = %v (%T), want a *ConfigError or *env.ParseError", err, err)
			}
		})
	}
	r := env.Map(map[string]string{EnvPrivacy: "client_ip=truncate,developer_email=hmac", EnvKey: testKey, EnvIPv4Prefix: "16"})
	c := ConfigFrom(r)
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	if c.Policy.Mode("client_ip") != Truncate || c.Policy.IPv4Bits != 16 || c.Policy.IPv6Bits != DefaultIPv6Bits {
		t.Fatalf("policy %+v", c.Policy)
	}
}

// TestEachModeOnEachField applies every mode a field can take to a record.
func TestEachModeOnEachField(t *testing.T) {
	get := map[string]func(*record.Record) string{
		"client_ip": func(r *record.Record) string {
			if !r.ClientIP.IsValid() {
				return ""
			}
			return r.ClientIP.String()
		},
		"forwarded_client_ip": func(r *record.Record) string {
			if !r.ForwardedClientIP.IsValid() {
				return ""
			}
			return r.ForwardedClientIP.String()
		},
		"developer_email":  func(r *record.Record) string { return r.DeveloperEmail },
		"identity.subject": func(r *record.Record) string { return r.Identity.Subject },
		"identity.email":   func(r *record.Record) string { return r.Identity.Email },
	}
	in := personalRecord("tenant-a")
	original := map[string]string{"client_ip": ip, "forwarded_client_ip": ip, "developer_email": email, "identity.subject": subject, "identity.email": idEmail}
	keys, _ := ParseKeys([]byte(testKey))
	for _, f := range PersonalFields() {
		for _, m := range []Mode{Keep, HMAC, Truncate, Drop} {
			spec := f.Key + "=" + m.String()
			if _, err := ParsePolicy(spec); err != nil {
				continue // refused, as TestParsePolicy checks
			}
			t.Run(spec, func(t *testing.T) {
				p := newTest(t, spec)
				r := in
				p.Record(&r)
				got := get[f.Key](&r)
				var want string
				switch m {
				case Keep:
					want = original[f.Key]
				case HMAC:
					want = keys.Pseudonym("tenant-a", original[f.Key])
				case Truncate:
					want = "203.0.113.0"
				}
				if got != want {
					t.Fatalf("%s = %q, want %q", f.Key, got, want)
				}
				for other, g := range get { // the other fields are untouched
					if other != f.Key && g(&r) != original[other] {
						t.Errorf("%s changed to %q", other, g(&r))
					}
				}
			})
		}
	}
}

func TestTruncateWidths(t *testing.T) {
	for _, tc := range []struct {
		v4, v6   int
		in, want string
	}{
		{24, 48, ip, "203.0.113.0"},
		{24, 48, ip6, "2001:db8:1234::"},
		{16, 32, ip, "203.0.0.0"},
		{16, 32, ip6, "2001:db8::"},
		{32, 128, ip6, ip6},
		{0, 0, ip, "0.0.0.0"},
	} {
		p := newTest(t, "client_ip=truncate")
		p.policy.IPv4Bits, p.policy.IPv6Bits = tc.v4, tc.v6
		if got := p.Addr(Truncate, netip.MustParseAddr(tc.in)); got.String() != tc.want {
			t.Errorf("/%d,/%d of %s = %s, want %s", tc.v4, tc.v6, tc.in, got, tc.want)
		}
	}
}

// TestPseudonymsPerTenant: equal values give equal pseudonyms within a
// tenant, different ones across tenants and across keys.
func TestPseudonymsPerTenant(t *testing.T) {
	keys, err := ParseKeys([]byte(testKey))
	if err != nil {
		t.Fatal(err)
	}
	a1, a2 := keys.Pseudonym("tenant-a", email), keys.Pseudonym("tenant-a", email)
	b := keys.Pseudonym("tenant-b", email)
	other := keys.Pseudonym("tenant-a", "bob@example.com")
	if a1 != a2 {
		t.Fatalf("same tenant, same value: %s and %s", a1, a2)
	}
	if a1 == b || a1 == other {
		t.Fatalf("pseudonyms collide: %s, %s, %s", a1, b, other)
	}
	if !strings.HasPrefix(a1, PseudonymPrefix) || len(a1) != len(PseudonymPrefix)+22 || strings.Contains(a1, email) {
		t.Fatalf("pseudonym %q: want %s and 22 base64url characters", a1, PseudonymPrefix)
	}
	rekeyed, _ := ParseKeys([]byte(strings.ToUpper(testKey)))
	if rekeyed.Pseudonym("tenant-a", email) == a1 {
		t.Fatal("another key gives the same pseudonym")
	}
	// A tenant with its own key: changing it changes that tenant's
	// pseudonyms only, which is how one tenant is erased.
	own, err := ParseKeys([]byte(`{"default":"` + testKey + `","tenants":{"tenant-b":"` + strings.Repeat("b", 32) + `"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if own.Pseudonym("tenant-a", email) != a1 {
		t.Fatal("the default key changed tenant-a's pseudonyms")
	}
	if own.Pseudonym("tenant-b", email) == b {
		t.Fatal("tenant-b's own key gives the default key's pseudonym")
	}
}

func TestParseKeysRefusals(t *testing.T) {
	for _, material := range []string{"", "short", `{"default":"short"}`, `{"default":"` + testKey + `","tenants":{"t":"short"}}`, `{"default":1}`, `{"key":"` + testKey + `"}`} {
		_, err := ParseKeys([]byte(material))
		if err == nil {
			t.Errorf("ParseKeys(%q) accepted", material)
			continue
		}
		if material != "" && strings.Contains(err.Error(), material) {
			t.Errorf("the error quotes the material: %v", err)
		}
	}
}

// TestLoadKeysFromSecretManager reads the key through the real client, as
// ingest does at start.
func TestLoadKeysFromSecretManager(t *testing.T) {
	srv, addr, err := secretmanagertest.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	name := "projects/p/secrets/privacy-key"
	if _, err := srv.Put(name, []byte(testKey+"\n")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := Load(ctx, Config{Policy: mustPolicy(t, "developer_email=hmac"), KeySecret: name, SecretManagerEndpoint: addr})
	if err != nil {
		t.Fatal(err)
	}
	local, _ := ParseKeys([]byte(testKey))
	if got, want := p.Keys().Pseudonym("t", email), local.Pseudonym("t", email); got != want {
		t.Fatalf("secret key gives %s, the same key from INGEST_PRIVACY_KEY %s", got, want)
	}
	_, err = Load(ctx, Config{Policy: mustPolicy(t, "developer_email=hmac"), KeySecret: "projects/p/secrets/missing", SecretManagerEndpoint: addr})
	if err == nil || !strings.Contains(err.Error(), EnvKeySecret) {
		t.Fatalf("missing secret: err = %v, want one naming %s", err, EnvKeySecret)
	}
}

// assertNoPersonal fails when b holds any of the personal values.
func assertNoPersonal(tb testing.TB, what string, b []byte) {
	tb.Helper()
	for _, v := range []string{ip, ip6, email, subject, idEmail, "alice"} {
		if bytes.Contains(b, []byte(v)) {
			tb.Errorf("%s holds %q: %s", what, v, b)
		}
	}
}

func TestPayloadRewrite(t *testing.T) {
	all := "client_ip=truncate,developer_email=hmac,identity.subject=hmac,identity.email=hmac"
	p := newTest(t, all)
	rec := `{"schema":"apigee.call.v1","client_ip":"` + ip + `","developer_email":"` + email +
		`","identity":{"subject":"` + subject + `","email":"` + idEmail + `","auth":"jwt"},"request_path":"/x","n":1.50}`
	logEntry := `{"jsonPayload":` + rec + `,"severity":"INFO"}`
	textEntry := `{"textPayload":` + strconvQuote(rec) + `}`
	for _, tc := range []struct {
		name, raw string
		check     func(t *testing.T, out []byte)
	}{
		{"record", rec, func(t *testing.T, out []byte) {
			var m map[string]any
			if err := json.Unmarshal(out, &m); err != nil {
				t.Fatal(err)
			}
			if m["client_ip"] != "203.0.113.0" || m["developer_email"] != p.keys.Pseudonym("tenant-a", email) {
				t.Errorf("rewritten %s", out)
			}
			id := m["identity"].(map[string]any)
			if id["subject"] != p.keys.Pseudonym("tenant-a", subject) || id["auth"] != "jwt" {
				t.Errorf("identity rewritten %v", id)
			}
			if !bytes.Contains(out, []byte(`"n":1.50`)) || !bytes.Contains(out, []byte(`"request_path":"/x"`)) {
				t.Errorf("other members changed: %s", out)
			}
		}},
		{"log entry", logEntry, nil},
		{"text payload", textEntry, nil},
		{"array", "[" + rec + "," + rec + "]", nil},
		{"stream", rec + "\n" + rec + "\n", nil},
		{"duplicate keys", `{"client_ip":"` + ip + `","client_ip":"` + ip6 + `"}`, nil},
		{"not an address", `{"client_ip":"` + ip + `x"}`, func(t *testing.T, out []byte) {
			if string(out) != `{"client_ip":"withheld"}` {
				t.Errorf("got %s", out)
			}
		}},
		{"not a string", `{"developer_email":{"v":"` + email + `"}}`, nil},
		{"not JSON", `{"client_ip":"` + ip + `",`, func(t *testing.T, out []byte) {
			var w struct {
				Withheld struct {
					Bytes int    `json:"bytes"`
					HMAC  string `json:"hmac"`
				} `json:"withheld"`
			}
			if err := json.Unmarshal(out, &w); err != nil || w.Withheld.Bytes != len(ip)+16 || w.Withheld.HMAC == "" {
				t.Errorf("withheld as %s (%v)", out, err)
			}
		}},
		{"binary", "\x00\xff" + email, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := p.Payload("tenant-a", []byte(tc.raw))
			assertNoPersonal(t, "payload", out)
			if tc.check != nil {
				tc.check(t, out)
			}
		})
	}
	t.Run("drop", func(t *testing.T) {
		p := newTest(t, "client_ip=drop,developer_email=drop,identity.subject=drop,identity.email=drop")
		out := p.Payload("t", []byte(rec))
		assertNoPersonal(t, "payload", out)
		if bytes.Contains(out, []byte("client_ip")) || !bytes.Contains(out, []byte(`"identity":{"auth":"jwt"}`)) {
			t.Errorf("dropped members are still there: %s", out)
		}
	})
	t.Run("keep", func(t *testing.T) {
		p := newTest(t, "")
		if out := p.Payload("t", []byte(rec)); string(out) != rec {
			t.Errorf("an inactive policy changed the payload: %s", out)
		}
	})
	t.Run("no key", func(t *testing.T) {
		p, err := New(mustPolicy(t, "client_ip=truncate"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if out := p.Payload("t", []byte("not json "+ip)); string(out) != `{"withheld":{"bytes":20}}` {
			t.Errorf("got %s", out)
		}
	})
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestValue(t *testing.T) {
	p := newTest(t, "client_ip=truncate,developer_email=hmac,identity.email=drop")
	for _, tc := range []struct {
		key, in, want string
		ok            bool
	}{
		{"client_ip", ip, "203.0.113.0", true},
		{"client_ip", "::ffff:" + ip, "203.0.113.0", true},
		{"client_ip", "nope", "", false},
		{"developer_email", email, p.keys.Pseudonym("t", email), true},
		{"identity.email", idEmail, "", false},
		{"identity.subject", subject, subject, true},
	} {
		got, ok := p.Value(tc.key, "t", tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Value(%s, %s) = %q, %v; want %q, %v", tc.key, tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// BenchmarkRecord: the cost per record of the demo's policy (three
// pseudonyms and a truncation).
func BenchmarkRecord(b *testing.B) {
	p := newTest(b, "client_ip=truncate,developer_email=hmac,identity.subject=hmac,identity.email=hmac")
	in := personalRecord("tenant-a")
	b.ReportAllocs()
	for b.Loop() {
		r := in
		p.Record(&r)
	}
}

// Records gives what Record gives, record by record.
func TestRecordsIsRecord(t *testing.T) {
	p := newTest(t, "client_ip=truncate,developer_email=hmac,identity.subject=hmac,identity.email=drop")
	rs := []record.Record{personalRecord("tenant-a"), personalRecord("tenant-b"), personalRecord("tenant-a")}
	rs[2].DeveloperEmail = "bob@example.com"
	want := slices.Clone(rs)
	for i := range want {
		p.Record(&want[i])
	}
	p.Records(rs)
	for i := range rs {
		if rs[i].DeveloperEmail != want[i].DeveloperEmail || rs[i].Identity.Subject != want[i].Identity.Subject || rs[i].Identity.Email != want[i].Identity.Email || rs[i].ClientIP != want[i].ClientIP {
			t.Errorf("record %d: Records %+v, Record %+v", i, rs[i], want[i])
		}
	}
	if rs[0].DeveloperEmail == rs[1].DeveloperEmail || rs[0].DeveloperEmail == rs[2].DeveloperEmail {
		t.Errorf("the memo mixed tenants or values: %q %q %q", rs[0].DeveloperEmail, rs[1].DeveloperEmail, rs[2].DeveloperEmail)
	}
}
