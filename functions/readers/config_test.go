package readers_test

import (
	"strings"
	"testing"
	"time"

	"apigee-timescale/functions/readers"
	"apigee-timescale/shared/env"
)

func TestConfigFrom(t *testing.T) {
	base := map[string]string{readers.EnvOrg: "my-org", "DATABASE_URL": "postgres://sync@db/apigee"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	cases := []struct {
		name    string
		env     map[string]string
		wantErr string
		check   func(c readers.Config) bool
	}{
		{"defaults", base, "", func(c readers.Config) bool {
			return c.Org == "my-org" && c.Endpoint == "" && !c.DryRun && c.MaxTenants == readers.DefaultMaxTenants &&
				c.Timeout == readers.DefaultTimeout && c.DB.DatabaseURL != ""
		}},
		{"everything", with(readers.EnvEndpoint, "http://127.0.0.1:9/", readers.EnvDryRun, "true", readers.EnvMaxTenants, "5",
			readers.EnvTimeout, "30s", readers.EnvAudience, "https://r", readers.EnvServiceAccount, "s@p.iam.gserviceaccount.com"), "",
			func(c readers.Config) bool {
				return c.Endpoint == "http://127.0.0.1:9/" && c.DryRun && c.MaxTenants == 5 && c.Timeout == 30*time.Second && c.Audience == "https://r"
			}},
		{"no org", map[string]string{"DATABASE_URL": "postgres://x@db/a"}, "READERS_APIGEE_ORG is required", nil},
		{"bad org", with(readers.EnvOrg, "My Org; drop"), "is not an Apigee organization name", nil},
		{"bad endpoint", with(readers.EnvEndpoint, "localhost:9"), "READERS_APIGEE_ENDPOINT", nil},
		{"too many tenants", with(readers.EnvMaxTenants, "5000"), "is above 1000", nil},
		{"zero tenants", with(readers.EnvMaxTenants, "0"), "READERS_MAX_TENANTS must be an integer of at least 1", nil},
		{"bad dry run", with(readers.EnvDryRun, "perhaps"), "READERS_DRY_RUN must be a boolean", nil},
		{"account without audience", with(readers.EnvServiceAccount, "s@p"), "READERS_AUDIENCE is not", nil},
		{"no database", map[string]string{readers.EnvOrg: "my-org"}, "no database configured", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := readers.ConfigFrom(env.Map(c.env))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, c.wantErr)
				}
				return
			}
			if err != nil || !c.check(cfg) {
				t.Fatalf("config %+v, err %v", cfg, err)
			}
		})
	}
}
