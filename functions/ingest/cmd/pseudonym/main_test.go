package main

import (
	"bytes"
	"strings"
	"testing"

	"apigee-timescale/shared/privacy"
)

const key = "pseudonym-command-test-key-0123456789abcdef"

func setEnv(t *testing.T, vars map[string]string) {
	t.Helper()
	for _, v := range []string{privacy.EnvPrivacy, privacy.EnvKey, privacy.EnvKeySecret, privacy.EnvIPv4Prefix, privacy.EnvIPv6Prefix, privacy.EnvSecretManager} {
		t.Setenv(v, vars[v])
	}
}

// The command prints what ingest stores under the same variables.
func TestPseudonymMatchesIngest(t *testing.T) {
	setEnv(t, map[string]string{privacy.EnvPrivacy: "client_ip=truncate,developer_email=hmac,identity.email=drop", privacy.EnvKey: key})
	keys, err := privacy.ParseKeys([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		field  string
		values []string
		want   string
	}{
		{"", []string{"alice@example.com", "203.0.113.7"},
			keys.Pseudonym("acme", "alice@example.com") + "\talice@example.com\n" + keys.Pseudonym("acme", "203.0.113.7") + "\t203.0.113.7\n"},
		{"client_ip", []string{"203.0.113.7", "2001:db8:1:2::3"}, "203.0.113.0\t203.0.113.7\n2001:db8:1::\t2001:db8:1:2::3\n"},
		{"developer_email", []string{"alice@example.com"}, keys.Pseudonym("acme", "alice@example.com") + "\talice@example.com\n"},
		{"identity.email", []string{"alice@example.com"}, "(not stored)\talice@example.com\n"},
		{"identity.subject", []string{"sub-1"}, "sub-1\tsub-1\n"},
	} {
		t.Run(tc.field, func(t *testing.T) {
			var out bytes.Buffer
			if err := run(&out, nil, "acme", tc.field, false, tc.values); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want {
				t.Fatalf("printed\n%s\nwant\n%s", out.String(), tc.want)
			}
		})
	}
	var out bytes.Buffer
	if err := run(&out, strings.NewReader("not json"), "acme", "", true, nil); err != nil {
		t.Fatal(err)
	}
	p, _ := privacy.New(privacy.Policy{}, keys)
	if want := p.Digest("acme", []byte("not json")) + "\t8 bytes\n"; out.String() != want {
		t.Fatalf("payload digest %q, want %q", out.String(), want)
	}
}

func TestPseudonymRefusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		env    map[string]string
		tenant string
		field  string
		want   string
	}{
		{"no tenant", map[string]string{privacy.EnvKey: key}, "", "", "-tenant"},
		{"no key", nil, "acme", "", privacy.EnvKeySecret},
		{"bad policy", map[string]string{privacy.EnvPrivacy: "client_ip=hmac", privacy.EnvKey: key}, "acme", "", privacy.EnvPrivacy},
		{"not personal", map[string]string{privacy.EnvKey: key}, "acme", "useragent", "not a personal field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setEnv(t, tc.env)
			err := run(&bytes.Buffer{}, nil, tc.tenant, tc.field, false, []string{"v"})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %s", err, tc.want)
			}
		})
	}
}
