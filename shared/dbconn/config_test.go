package dbconn_test

import (
	"strings"
	"testing"
	"time"

	"apigee-timescale/shared/dbconn"
)

var allEnv = []string{
	dbconn.EnvDatabaseURL, dbconn.EnvDBSecret, dbconn.EnvCloudSQLInstance, dbconn.EnvCloudSQLPrivateIP,
	dbconn.EnvDBIAMUser, dbconn.EnvDBName, dbconn.EnvSecretManagerEndpoint, dbconn.EnvMaxConns,
	dbconn.EnvMaxConnLifetime, dbconn.EnvStatementTimeout, dbconn.EnvConnectTimeout, dbconn.EnvApplicationName,
}

// clearEnv blanks every variable ConfigFromEnv reads (empty counts as unset)
// so the host environment cannot leak into a case.
func clearEnv(t *testing.T, prefixes ...string) {
	t.Helper()
	for _, p := range prefixes {
		for _, n := range allEnv {
			t.Setenv(p+n, "")
		}
	}
}

func TestConfigFromEnv(t *testing.T) {
	const (
		dsn      = "postgres://app:hunter2-pw@127.0.0.1:5432/apigee?sslmode=disable"
		secret   = "projects/p/secrets/db"
		instance = "my-project:europe-west1:tsdb"
	)
	defaults := dbconn.Config{
		MaxConns:         dbconn.DefaultMaxConns,
		MaxConnLifetime:  dbconn.DefaultMaxConnLifetime,
		StatementTimeout: dbconn.DefaultStatementTimeout,
		ConnectTimeout:   dbconn.DefaultConnectTimeout,
	}
	with := func(f func(*dbconn.Config)) dbconn.Config { c := defaults; f(&c); return c }

	valid := []struct {
		name   string
		prefix string
		env    map[string]string
		want   dbconn.Config
	}{
		{
			name: "database url",
			env:  map[string]string{"DATABASE_URL": dsn},
			want: with(func(c *dbconn.Config) { c.DatabaseURL = dsn }),
		},
		{
			name: "database url with tuning",
			env: map[string]string{
				"DATABASE_URL": dsn, "DB_MAX_CONNS": "3", "DB_MAX_CONN_LIFETIME": "5m",
				"DB_STATEMENT_TIMEOUT": "2s", "DB_CONNECT_TIMEOUT": "4s", "DB_APPLICATION_NAME": "ingest",
			},
			want: dbconn.Config{
				DatabaseURL: dsn, MaxConns: 3, MaxConnLifetime: 5 * time.Minute,
				StatementTimeout: 2 * time.Second, ConnectTimeout: 4 * time.Second, ApplicationName: "ingest",
			},
		},
		{
			// The fallback is K_SERVICE as the process started with it
			// (env.CloudRunService: shared/function clears the variable),
			// never what a Reader sees later.
			name: "secret with local endpoint, a K_SERVICE read later is not the application name",
			env:  map[string]string{"DB_SECRET": secret, "SECRET_MANAGER_ENDPOINT": "127.0.0.1:9090", "K_SERVICE": "rollup"},
			want: with(func(c *dbconn.Config) {
				c.DBSecret, c.SecretManagerEndpoint = secret, "127.0.0.1:9090"
			}),
		},
		{
			name: "cloud sql with secret",
			env:  map[string]string{"CLOUDSQL_INSTANCE": instance, "DB_SECRET": secret},
			want: with(func(c *dbconn.Config) { c.CloudSQLInstance, c.DBSecret = instance, secret }),
		},
		{
			name: "cloud sql with IAM user on private IP",
			env: map[string]string{
				"CLOUDSQL_INSTANCE": "example.com:" + instance, "DB_IAM_USER": "ingest@my-project.iam",
				"DB_NAME": "apigee", "CLOUDSQL_PRIVATE_IP": "true",
			},
			want: with(func(c *dbconn.Config) {
				c.CloudSQLInstance, c.DBIAMUser, c.DBName, c.CloudSQLPrivateIP = "example.com:"+instance, "ingest@my-project.iam", "apigee", true
			}),
		},
		{
			name: "values are trimmed",
			env:  map[string]string{"DATABASE_URL": " " + dsn + "\n", "DB_MAX_CONNS": "\t3 ", "DB_CONNECT_TIMEOUT": " 4s"},
			want: with(func(c *dbconn.Config) { c.DatabaseURL, c.MaxConns, c.ConnectTimeout = dsn, 3, 4*time.Second }),
		},
		{
			name:   "prefix",
			prefix: "ROLLUP_",
			env:    map[string]string{"ROLLUP_DATABASE_URL": dsn, "DATABASE_URL": "ignored", "ROLLUP_DB_MAX_CONNS": "2"},
			want:   with(func(c *dbconn.Config) { c.DatabaseURL, c.MaxConns = dsn, 2 }),
		},
	}
	for _, tc := range valid {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t, "", tc.prefix)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			got, err := dbconn.ConfigFromEnv(tc.prefix)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
			if err := got.Validate(); err != nil {
				t.Fatalf("Validate of a ConfigFromEnv result: %v", err)
			}
		})
	}

	invalid := []struct {
		name    string
		prefix  string
		env     map[string]string
		wantErr []string // substrings, the first being the variable at fault
	}{
		{name: "nothing", wantErr: []string{"DATABASE_URL", "no database configured"}},
		{name: "prefixed nothing", prefix: "X_", env: map[string]string{"DATABASE_URL": dsn}, wantErr: []string{"X_DATABASE_URL"}},
		{name: "url and secret", env: map[string]string{"DATABASE_URL": dsn, "DB_SECRET": secret}, wantErr: []string{"DATABASE_URL cannot be combined with DB_SECRET"}},
		{name: "url and instance", env: map[string]string{"DATABASE_URL": dsn, "CLOUDSQL_INSTANCE": instance}, wantErr: []string{"DATABASE_URL cannot be combined with CLOUDSQL_INSTANCE"}},
		{name: "url and iam user", env: map[string]string{"DATABASE_URL": dsn, "DB_IAM_USER": "u@p.iam"}, wantErr: []string{"DATABASE_URL cannot be combined with DB_IAM_USER"}},
		{name: "malformed url", env: map[string]string{"DATABASE_URL": "postgres://app:hunter2-pw@host:notaport/db"}, wantErr: []string{"DATABASE_URL is not a valid", "invalid port"}},
		{name: "malformed secret", env: map[string]string{"DB_SECRET": "db-creds"}, wantErr: []string{"DB_SECRET", "projects/PROJECT/secrets/NAME"}},
		{name: "secret with db name", env: map[string]string{"DB_SECRET": secret, "DB_NAME": "x"}, wantErr: []string{"DB_NAME is only used with DB_IAM_USER"}},
		{name: "instance alone", env: map[string]string{"CLOUDSQL_INSTANCE": instance}, wantErr: []string{"CLOUDSQL_INSTANCE needs DB_SECRET", "DB_IAM_USER"}},
		{name: "instance malformed", env: map[string]string{"CLOUDSQL_INSTANCE": "my-project/tsdb", "DB_SECRET": secret}, wantErr: []string{"CLOUDSQL_INSTANCE", "project:region:instance"}},
		{name: "instance with secret and iam", env: map[string]string{"CLOUDSQL_INSTANCE": instance, "DB_SECRET": secret, "DB_IAM_USER": "u@p.iam", "DB_NAME": "d"}, wantErr: []string{"CLOUDSQL_INSTANCE takes either DB_SECRET", "not both"}},
		{name: "iam without instance", env: map[string]string{"DB_IAM_USER": "u@p.iam", "DB_NAME": "d"}, wantErr: []string{"DB_IAM_USER needs CLOUDSQL_INSTANCE"}},
		{name: "iam without db name", env: map[string]string{"CLOUDSQL_INSTANCE": instance, "DB_IAM_USER": "u@p.iam"}, wantErr: []string{"DB_IAM_USER needs DB_NAME"}},
		{name: "iam full email", env: map[string]string{"CLOUDSQL_INSTANCE": instance, "DB_IAM_USER": "u@p.iam.gserviceaccount.com", "DB_NAME": "d"}, wantErr: []string{"DB_IAM_USER", ".gserviceaccount.com"}},
		{name: "private ip without instance", env: map[string]string{"DB_SECRET": secret, "CLOUDSQL_PRIVATE_IP": "1"}, wantErr: []string{"CLOUDSQL_PRIVATE_IP needs CLOUDSQL_INSTANCE"}},
		{name: "private ip not bool", env: map[string]string{"CLOUDSQL_INSTANCE": instance, "DB_SECRET": secret, "CLOUDSQL_PRIVATE_IP": "maybe"}, wantErr: []string{"CLOUDSQL_PRIVATE_IP", "boolean"}},
		{name: "max conns not int", env: map[string]string{"DATABASE_URL": dsn, "DB_MAX_CONNS": "many"}, wantErr: []string{"DB_MAX_CONNS", "integer"}},
		{name: "max conns over int32", env: map[string]string{"DATABASE_URL": dsn, "DB_MAX_CONNS": "3000000000"}, wantErr: []string{"DB_MAX_CONNS", "integer"}},
		{name: "every parse error at once", env: map[string]string{"DATABASE_URL": dsn, "DB_MAX_CONNS": "x", "DB_CONNECT_TIMEOUT": "soon"}, wantErr: []string{"DB_MAX_CONNS", "DB_CONNECT_TIMEOUT"}},
		{name: "max conns zero", env: map[string]string{"DATABASE_URL": dsn, "DB_MAX_CONNS": "0"}, wantErr: []string{"DB_MAX_CONNS", "at least 1"}},
		{name: "lifetime not duration", env: map[string]string{"DATABASE_URL": dsn, "DB_MAX_CONN_LIFETIME": "30"}, wantErr: []string{"DB_MAX_CONN_LIFETIME", "duration"}},
		{name: "lifetime zero", env: map[string]string{"DATABASE_URL": dsn, "DB_MAX_CONN_LIFETIME": "0s"}, wantErr: []string{"DB_MAX_CONN_LIFETIME", "positive"}},
		{name: "statement timeout negative", env: map[string]string{"DATABASE_URL": dsn, "DB_STATEMENT_TIMEOUT": "-1s"}, wantErr: []string{"DB_STATEMENT_TIMEOUT", "positive"}},
		{name: "connect timeout garbage", env: map[string]string{"DATABASE_URL": dsn, "DB_CONNECT_TIMEOUT": "soon"}, wantErr: []string{"DB_CONNECT_TIMEOUT", "duration"}},
	}
	for _, tc := range invalid {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t, "", tc.prefix)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := dbconn.ConfigFromEnv(tc.prefix)
			if err == nil {
				t.Fatal("ConfigFromEnv accepted an invalid configuration")
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Fatalf("error %q does not contain %q", err, want)
				}
			}
			if strings.Contains(err.Error(), "hunter2-pw") {
				t.Fatalf("error leaks the DSN password: %v", err)
			}
		})
	}

	t.Run("two prefixes", func(t *testing.T) {
		if _, err := dbconn.ConfigFromEnv("A_", "B_"); err == nil {
			t.Fatal("accepted two prefixes")
		}
	})
}

func TestValidateAppliesDefaults(t *testing.T) {
	tests := []struct {
		name    string
		cfg     dbconn.Config
		wantErr string
	}{
		{"zero pool fields mean defaults", dbconn.Config{DBSecret: "projects/p/secrets/s"}, ""},
		{"statement timeout under 1ms", dbconn.Config{DBSecret: "projects/p/secrets/s", StatementTimeout: time.Microsecond}, "DB_STATEMENT_TIMEOUT"},
		{"negative lifetime", dbconn.Config{DBSecret: "projects/p/secrets/s", MaxConnLifetime: -time.Second}, "DB_MAX_CONN_LIFETIME"},
		{"empty", dbconn.Config{}, "no database configured"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to mention %s", err, tc.wantErr)
			}
		})
	}
}
