package dbconn

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/shared/env"
	"apigee-timescale/shared/secrets"
)

// Environment variable names read by ConfigFromEnv (before any prefix),
// each with its default when it has one: the one place they are declared
// (the README's table is checked against them). Open applies the same
// defaults to zero fields of a Config built by hand.
const (
	EnvDatabaseURL           = "DATABASE_URL"
	EnvDBSecret              = "DB_SECRET"
	EnvCloudSQLInstance      = "CLOUDSQL_INSTANCE"
	EnvCloudSQLPrivateIP     = "CLOUDSQL_PRIVATE_IP"
	EnvDBIAMUser             = "DB_IAM_USER"
	EnvDBName                = "DB_NAME"
	EnvSecretManagerEndpoint = secrets.EndpointEnv
	EnvMaxConns              = "DB_MAX_CONNS"
	DefaultMaxConns          = 8
	EnvMaxConnLifetime       = "DB_MAX_CONN_LIFETIME"
	DefaultMaxConnLifetime   = 30 * time.Minute
	EnvStatementTimeout      = "DB_STATEMENT_TIMEOUT"
	DefaultStatementTimeout  = 30 * time.Second
	EnvConnectTimeout        = "DB_CONNECT_TIMEOUT"
	DefaultConnectTimeout    = 10 * time.Second
	EnvApplicationName       = "DB_APPLICATION_NAME"
)

// Cloud SQL instance connection names, optionally with a legacy
// domain-scoped project ("example.com:project:region:instance"), as
// cloudsqlconn parses them.
var instanceRe = regexp.MustCompile(`^([^:]+:)?[^:]+:[^:]+:[^:]+$`)

// Config says how to reach the database. Exactly one source is used:
// DatabaseURL; or DBSecret; or CloudSQLInstance with either DBSecret or
// DBIAMUser (+ DBName).
type Config struct {
	// DatabaseURL (DATABASE_URL) is a plain PostgreSQL DSN, for local runs and
	// tests. The pool, timeout and application name fields below override
	// the matching settings in it.
	DatabaseURL string
	// DBSecret (DB_SECRET) is a Secret Manager secret resource name
	// projects/P/secrets/S whose latest version holds secrets.DBCredentials
	// JSON. Credentials are re-read when the database rejects them.
	DBSecret string
	// CloudSQLInstance (CLOUDSQL_INSTANCE) is project:region:instance; when
	// set, connections go through the Cloud SQL Go connector (lazy refresh),
	// which supplies TLS, so host and sslmode from the secret are ignored.
	CloudSQLInstance string
	// CloudSQLPrivateIP (CLOUDSQL_PRIVATE_IP=true) dials the instance's
	// private IP instead of its public one.
	CloudSQLPrivateIP bool
	// DBIAMUser (DB_IAM_USER), with CloudSQLInstance, selects IAM database
	// authentication without a password. For a service account it is the
	// email without ".gserviceaccount.com".
	DBIAMUser string
	// DBName (DB_NAME) is the database to use with DBIAMUser; the other
	// sources carry the database name themselves.
	DBName string
	// SecretManagerEndpoint (SECRET_MANAGER_ENDPOINT) points at a local or
	// test Secret Manager (plaintext gRPC); empty means production.
	SecretManagerEndpoint string
	// MaxConns (DB_MAX_CONNS, DefaultMaxConns) caps the pool.
	MaxConns int32
	// MaxConnLifetime (DB_MAX_CONN_LIFETIME, DefaultMaxConnLifetime) closes
	// connections after this age. Connections opened with rotated-out
	// credentials live at most this long, so it must stay shorter than the
	// rotation grace period (the time the previous credential keeps
	// working).
	MaxConnLifetime time.Duration
	// StatementTimeout (DB_STATEMENT_TIMEOUT) is sent as the statement_timeout
	// runtime parameter (DefaultStatementTimeout), at least 1ms.
	StatementTimeout time.Duration
	// ConnectTimeout (DB_CONNECT_TIMEOUT, DefaultConnectTimeout) bounds one
	// connection attempt.
	ConnectTimeout time.Duration
	// ApplicationName (DB_APPLICATION_NAME, else the Cloud Run service's
	// name, env.CloudRunService) is sent as application_name when not
	// empty.
	ApplicationName string
}

// ConfigFromEnv reads the variables named by the Env* constants, each with
// the optional prefix (at most one; e.g. "ROLLUP_" reads ROLLUP_DATABASE_URL),
// applies defaults and validates the result. Errors name the variable at
// fault and never quote DATABASE_URL.
func ConfigFromEnv(prefix ...string) (Config, error) {
	if len(prefix) > 1 {
		return Config{}, errors.New("dbconn: ConfigFromEnv takes at most one prefix")
	}
	r := env.New(os.Getenv)
	if len(prefix) == 1 {
		r = r.WithPrefix(prefix[0])
	}
	return ConfigFrom(r)
}

// ConfigFrom is ConfigFromEnv through r (and r's prefix).
func ConfigFrom(r *env.Reader) (Config, error) {
	r = r.WithPrefix("") // this package's errors apart from the caller's
	const positive = time.Nanosecond
	c := Config{
		DatabaseURL:           r.String(EnvDatabaseURL, ""),
		DBSecret:              r.String(EnvDBSecret, ""),
		CloudSQLInstance:      r.String(EnvCloudSQLInstance, ""),
		CloudSQLPrivateIP:     r.Bool(EnvCloudSQLPrivateIP, false),
		DBIAMUser:             r.String(EnvDBIAMUser, ""),
		DBName:                r.String(EnvDBName, ""),
		SecretManagerEndpoint: r.String(EnvSecretManagerEndpoint, ""),
		MaxConnLifetime:       r.Duration(EnvMaxConnLifetime, DefaultMaxConnLifetime, positive),
		StatementTimeout:      r.Duration(EnvStatementTimeout, DefaultStatementTimeout, positive),
		ConnectTimeout:        r.Duration(EnvConnectTimeout, DefaultConnectTimeout, positive),
		ApplicationName:       r.String(EnvApplicationName, ""),
	}
	// pgx takes an int32.
	c.MaxConns = env.Parse(r, EnvMaxConns, int32(DefaultMaxConns), "an integer of at least 1",
		func(n int32) string { return strconv.Itoa(int(n)) },
		func(s string) (int32, error) {
			n, err := strconv.ParseInt(s, 10, 32)
			if err == nil && n < 1 {
				err = env.ErrRange
			}
			return int32(n), err
		})
	if c.ApplicationName == "" {
		c.ApplicationName = env.CloudRunService()
	}
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("dbconn: %w", err)
	}
	if err := c.validate(r.Prefix()); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Validate checks the combination of sources and the pool settings; zero
// pool settings count as their defaults. Errors name the environment
// variable of the offending field.
func (c Config) Validate() error {
	return c.withDefaults().validate("")
}

func (c Config) withDefaults() Config {
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxConnLifetime == 0 {
		c.MaxConnLifetime = DefaultMaxConnLifetime
	}
	if c.StatementTimeout == 0 {
		c.StatementTimeout = DefaultStatementTimeout
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	return c
}

func (c Config) validate(p string) error {
	v := func(name string) string { return p + name }
	set := func(names ...string) string {
		vals := map[string]bool{
			EnvDBSecret: c.DBSecret != "", EnvCloudSQLInstance: c.CloudSQLInstance != "",
			EnvDBIAMUser: c.DBIAMUser != "", EnvDBName: c.DBName != "",
		}
		var out []string
		for _, n := range names {
			if vals[n] {
				out = append(out, v(n))
			}
		}
		return strings.Join(out, ", ")
	}

	switch {
	case c.DatabaseURL != "":
		if others := set(EnvDBSecret, EnvCloudSQLInstance, EnvDBIAMUser, EnvDBName); others != "" {
			return fmt.Errorf("dbconn: %s cannot be combined with %s: choose one database source", v(EnvDatabaseURL), others)
		}
		if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
			return fmt.Errorf("dbconn: %s is not a valid PostgreSQL connection string (value not shown: it may hold a password)%s",
				v(EnvDatabaseURL), parseReason(err))
		}
	case c.CloudSQLInstance != "":
		if !instanceRe.MatchString(c.CloudSQLInstance) {
			return fmt.Errorf("dbconn: %s=%q is not a Cloud SQL instance connection name project:region:instance", v(EnvCloudSQLInstance), c.CloudSQLInstance)
		}
		switch {
		case c.DBSecret != "" && c.DBIAMUser != "":
			return fmt.Errorf("dbconn: %s takes either %s (password) or %s (IAM authentication), not both", v(EnvCloudSQLInstance), v(EnvDBSecret), v(EnvDBIAMUser))
		case c.DBSecret != "":
			if err := c.validateSecret(p); err != nil {
				return err
			}
			if c.DBName != "" {
				return fmt.Errorf("dbconn: %s is only used with %s; with %s the database comes from the secret", v(EnvDBName), v(EnvDBIAMUser), v(EnvDBSecret))
			}
		case c.DBIAMUser != "":
			if strings.HasSuffix(c.DBIAMUser, ".gserviceaccount.com") {
				return fmt.Errorf("dbconn: %s=%q: drop the .gserviceaccount.com suffix, Cloud SQL names IAM service account users without it",
					v(EnvDBIAMUser), c.DBIAMUser)
			}
			if c.DBName == "" {
				return fmt.Errorf("dbconn: %s needs %s (the database to connect to)", v(EnvDBIAMUser), v(EnvDBName))
			}
		default:
			return fmt.Errorf("dbconn: %s needs %s (password in Secret Manager) or %s (IAM authentication)", v(EnvCloudSQLInstance), v(EnvDBSecret), v(EnvDBIAMUser))
		}
	case c.DBIAMUser != "":
		return fmt.Errorf("dbconn: %s needs %s: IAM database authentication only works through the Cloud SQL connector", v(EnvDBIAMUser), v(EnvCloudSQLInstance))
	case c.DBSecret != "":
		if err := c.validateSecret(p); err != nil {
			return err
		}
		if c.DBName != "" {
			return fmt.Errorf("dbconn: %s is only used with %s; with %s the database comes from the secret", v(EnvDBName), v(EnvDBIAMUser), v(EnvDBSecret))
		}
	default:
		return fmt.Errorf("dbconn: no database configured: set %s, %s, or %s with %s or %s",
			v(EnvDatabaseURL), v(EnvDBSecret), v(EnvCloudSQLInstance), v(EnvDBSecret), v(EnvDBIAMUser))
	}
	if c.CloudSQLPrivateIP && c.CloudSQLInstance == "" {
		return fmt.Errorf("dbconn: %s needs %s", v(EnvCloudSQLPrivateIP), v(EnvCloudSQLInstance))
	}

	switch {
	case c.MaxConns < 1:
		return fmt.Errorf("dbconn: %s=%d must be at least 1", v(EnvMaxConns), c.MaxConns)
	case c.MaxConnLifetime < 0:
		return fmt.Errorf("dbconn: %s=%s must be positive", v(EnvMaxConnLifetime), c.MaxConnLifetime)
	case c.StatementTimeout < time.Millisecond:
		return fmt.Errorf("dbconn: %s=%s must be at least 1ms", v(EnvStatementTimeout), c.StatementTimeout)
	case c.ConnectTimeout < 0:
		return fmt.Errorf("dbconn: %s=%s must be positive", v(EnvConnectTimeout), c.ConnectTimeout)
	}
	return nil
}

func (c Config) validateSecret(p string) error {
	if !secrets.ValidSecretName(c.DBSecret) {
		return fmt.Errorf("dbconn: %s%s=%q is not a secret resource name projects/PROJECT/secrets/NAME", p, EnvDBSecret, c.DBSecret)
	}
	return nil
}

// parseReason extracts why a DSN did not parse without quoting the DSN:
// pgconn redacts the password only on a best-effort basis, so everything up
// to the end of the quoted connection string is dropped.
func parseReason(err error) string {
	var pce *pgconn.ParseConfigError
	if errors.As(err, &pce) {
		s := pce.Error()
		if i := strings.LastIndex(s, "`: "); i >= 0 {
			return ": " + s[i+len("`: "):]
		}
	}
	return ""
}
