package rotate_test

import (
	"strings"
	"testing"
	"time"

	"apigee-timescale/functions/rotate"
	"apigee-timescale/shared/dbconn"
)

// clearEnv unsets every variable ConfigFromEnv reads, so the machine's
// environment cannot leak into a case.
func clearEnv(t *testing.T) {
	for _, v := range []string{
		rotate.EnvSecret, rotate.EnvTTL, rotate.EnvMinInterval, rotate.EnvTimeout,
		rotate.EnvDBHost, rotate.EnvDBPort, rotate.EnvDBName, rotate.EnvDBSSLMode,
		rotate.EnvAudience, rotate.EnvServiceAccount,
		dbconn.EnvDatabaseURL, dbconn.EnvDBSecret, dbconn.EnvCloudSQLInstance, dbconn.EnvCloudSQLPrivateIP,
		dbconn.EnvDBIAMUser, dbconn.EnvDBName, dbconn.EnvSecretManagerEndpoint, dbconn.EnvMaxConns,
		dbconn.EnvMaxConnLifetime, dbconn.EnvStatementTimeout, dbconn.EnvConnectTimeout, dbconn.EnvApplicationName,
	} {
		t.Setenv(v, "")
	}
}

func TestConfigFromEnv(t *testing.T) {
	const secret = "projects/p/secrets/ingest-db"
	base := map[string]string{rotate.EnvSecret: secret, dbconn.EnvDatabaseURL: "postgres://rotator@db/apigee"}
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
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
		check   func(t *testing.T, c rotate.Config)
	}{
		{name: "defaults", env: base, check: func(t *testing.T, c rotate.Config) {
			if c.Secret != secret || c.TTL != rotate.DefaultTTL || c.MinInterval != rotate.DefaultMinInterval || c.Timeout != rotate.DefaultTimeout ||
				c.Audience != "" || c.CloudSQLInstance != "" || c.DB.DatabaseURL == "" {
				t.Fatalf("config %+v", c)
			}
		}},
		{name: "everything set", env: with(rotate.EnvTTL, "48h", rotate.EnvMinInterval, "0s", rotate.EnvTimeout, "2m",
			rotate.EnvDBHost, "10.0.0.5", rotate.EnvDBPort, "6432", rotate.EnvDBName, "apigee", rotate.EnvDBSSLMode, "require",
			rotate.EnvAudience, "https://rotate", rotate.EnvServiceAccount, "sa@p.iam.gserviceaccount.com"),
			check: func(t *testing.T, c rotate.Config) {
				if c.TTL != 48*time.Hour || c.MinInterval != 0 || c.Timeout != 2*time.Minute || c.Host != "10.0.0.5" || c.Port != 6432 ||
					c.Database != "apigee" || c.SSLMode != "require" || c.Audience != "https://rotate" || c.ServiceAccount == "" {
					t.Fatalf("config %+v", c)
				}
			}},
		{name: "cloud sql with IAM for the rotator", env: map[string]string{rotate.EnvSecret: secret, rotate.EnvDBName: "apigee",
			dbconn.EnvCloudSQLInstance: "p:europe-west1:db", dbconn.EnvCloudSQLPrivateIP: "true", dbconn.EnvDBIAMUser: "rotator@p.iam", dbconn.EnvDBName: "apigee"},
			check: func(t *testing.T, c rotate.Config) {
				if c.CloudSQLInstance != "p:europe-west1:db" || !c.CloudSQLPrivateIP {
					t.Fatalf("test logins do not follow the rotator's instance: %+v", c)
				}
			}},
		{name: "values are trimmed", env: with(rotate.EnvSecret, " "+secret+"\n", rotate.EnvTTL, " 48h ", rotate.EnvDBPort, "\t6432"),
			check: func(t *testing.T, c rotate.Config) {
				if c.Secret != secret || c.TTL != 48*time.Hour || c.Port != 6432 {
					t.Fatalf("config %+v", c)
				}
			}},
		{name: "no secret", env: map[string]string{dbconn.EnvDatabaseURL: "postgres://x@db/a"}, wantErr: "ROTATE_SECRET is required"},
		{name: "secret version", env: with(rotate.EnvSecret, secret+"/versions/3"), wantErr: "ROTATE_SECRET"},
		{name: "not a secret", env: with(rotate.EnvSecret, "ingest-db"), wantErr: "ROTATE_SECRET"},
		{name: "TTL too short", env: with(rotate.EnvTTL, "30s"), wantErr: "ROTATE_TTL=30s must be at least 1m0s"},
		{name: "TTL not a duration", env: with(rotate.EnvTTL, "3 days"), wantErr: "ROTATE_TTL must be a positive duration"},
		{name: "TTL zero", env: with(rotate.EnvTTL, "0s"), wantErr: "ROTATE_TTL must be a positive duration"},
		{name: "interval not below TTL", env: with(rotate.EnvTTL, "1h", rotate.EnvMinInterval, "1h"), wantErr: "ROTATE_MIN_INTERVAL (1h0m0s) must be shorter"},
		{name: "negative interval", env: with(rotate.EnvMinInterval, "-1m"), wantErr: "ROTATE_MIN_INTERVAL must be a non-negative duration"},
		{name: "bad port", env: with(rotate.EnvDBPort, "http"), wantErr: "ROTATE_DB_PORT must be a port number"},
		{name: "port out of range", env: with(rotate.EnvDBPort, "70000"), wantErr: "ROTATE_DB_PORT=70000 is out of range"},
		{name: "bad sslmode", env: with(rotate.EnvDBSSLMode, "always"), wantErr: "ROTATE_DB_SSLMODE"},
		{name: "service account without audience", env: with(rotate.EnvServiceAccount, "sa@p.iam.gserviceaccount.com"), wantErr: "ROTATE_AUDIENCE is not"},
		{name: "rotator using the rotated secret", env: map[string]string{rotate.EnvSecret: secret, dbconn.EnvDBSecret: secret}, wantErr: "name the same secret"},
		{name: "no database for the rotator", env: map[string]string{rotate.EnvSecret: secret}, wantErr: "no database configured"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := rotate.ConfigFromEnv()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}
