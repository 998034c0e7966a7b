package rotate

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/env"
	"apigee-timescale/shared/secrets"
)

// Environment variables read by ConfigFromEnv, besides the shared/dbconn ones
// (DATABASE_URL, DB_SECRET, CLOUDSQL_INSTANCE, ...) that say how the rotator
// itself reaches the database; each with its default when it has one: the
// one place they are declared (the README's table is checked against them).
// NewService applies the same defaults to zero fields.
const (
	EnvSecret          = "ROTATE_SECRET"
	EnvTTL             = "ROTATE_TTL"
	DefaultTTL         = 72 * time.Hour
	EnvMinInterval     = "ROTATE_MIN_INTERVAL"
	DefaultMinInterval = 10 * time.Minute
	EnvTimeout         = "ROTATE_TIMEOUT"
	DefaultTimeout     = 60 * time.Second
	EnvDBHost          = "ROTATE_DB_HOST"
	EnvDBPort          = "ROTATE_DB_PORT"
	EnvDBName          = "ROTATE_DB_NAME"
	EnvDBSSLMode       = "ROTATE_DB_SSLMODE"
	EnvAudience        = "ROTATE_AUDIENCE"
	EnvServiceAccount  = "ROTATE_SERVICE_ACCOUNT"
)

// MinTTL keeps a typo ("72" read as 72ns is refused anyway, but "1s" is
// not) from creating passwords that expire before consumers use them.
const MinTTL = time.Minute

// Config is the rotate function's configuration, read from the environment
// once and validated at once.
type Config struct {
	// Secret (ROTATE_SECRET, required) is the secret to rotate,
	// projects/P/secrets/S: the one the ingest functions read as DB_SECRET.
	// Its versions hold secrets.DBCredentials JSON.
	Secret string

	// TTL (ROTATE_TTL, DefaultTTL): a new password is valid until now +
	// TTL (VALID UNTIL). The newest credential must outlive the next run,
	// and the previous one should too, so keep TTL above twice the schedule
	// period plus slack for missed runs: 72h suits a daily schedule. If runs
	// stop for longer than TTL, every login expires.
	TTL time.Duration
	// MinInterval (ROTATE_MIN_INTERVAL, DefaultMinInterval; "0s", or zero in a
	// Config built by hand, turns it off): a
	// run that finds the newest version younger than this, enabled and
	// readable, only tidies older versions and answers "skipped". It lets a
	// Cloud Scheduler job, a SECRET_ROTATE notification and their retries
	// fire together and still rotate once.
	MinInterval time.Duration
	// Timeout (ROTATE_TIMEOUT, DefaultTimeout) bounds one run.
	Timeout time.Duration

	// Host, Port, Database, SSLMode (ROTATE_DB_HOST, ROTATE_DB_PORT,
	// ROTATE_DB_NAME, ROTATE_DB_SSLMODE): the connection fields written into
	// new versions. Each one left empty is copied from the newest readable
	// version; they are needed only to bootstrap an empty secret or to move
	// consumers to another host. Port defaults to 5432, SSLMode to "" (libpq
	// "prefer"). Host may stay empty when CloudSQLInstance is set.
	Host     string
	Port     int
	Database string
	SSLMode  string

	// CloudSQLInstance and CloudSQLPrivateIP: when the instance is set, the
	// new credentials are tested through the Cloud SQL connector, the way
	// consumers with CLOUDSQL_INSTANCE connect, instead of at Host.
	// ConfigFromEnv copies them from DB: the rotated logins live on the
	// instance the rotator itself uses.
	CloudSQLInstance  string
	CloudSQLPrivateIP bool

	// Audience (ROTATE_AUDIENCE) turns on OIDC verification of every
	// request: the `aud` of the Cloud Scheduler job's or push subscription's
	// token. Empty: verification is off, and every request logs a warning.
	Audience string
	// ServiceAccount (ROTATE_SERVICE_ACCOUNT), optional: the only caller
	// email accepted.
	ServiceAccount string

	// DB is how the rotator itself connects (dbconn's variables, no
	// prefix): as a login in the apigee_rotate group, never with the
	// credentials it rotates.
	DB dbconn.Config
}

// ConfigFromEnv reads and validates the configuration, including the
// rotator's own database settings (shared/dbconn variables).
func ConfigFromEnv() (Config, error) {
	return ConfigFrom(env.New(os.Getenv))
}

// ConfigFrom is ConfigFromEnv through r.
func ConfigFrom(r *env.Reader) (Config, error) {
	c, err := configFrom(r)
	if err != nil {
		return Config{}, err
	}
	db, err := dbconn.ConfigFrom(r)
	if err != nil {
		return Config{}, fmt.Errorf("rotate config: %w", err)
	}
	c.DB = db
	c.CloudSQLInstance, c.CloudSQLPrivateIP = db.CloudSQLInstance, db.CloudSQLPrivateIP
	if err := c.validateDB(); err != nil {
		return Config{}, fmt.Errorf("rotate config: %w", err)
	}
	return c, nil
}

func configFrom(r *env.Reader) (Config, error) {
	const positive = time.Nanosecond
	c := Config{
		Secret:      r.String(EnvSecret, ""),
		TTL:         r.Duration(EnvTTL, DefaultTTL, positive),
		MinInterval: r.Duration(EnvMinInterval, DefaultMinInterval, 0),
		Timeout:     r.Duration(EnvTimeout, DefaultTimeout, positive),
		Host:        r.String(EnvDBHost, ""),
		// Out of range is Validate's to say, as for a Config built by hand.
		Port:           env.Parse(r, EnvDBPort, 0, "a port number", portString, strconv.Atoi),
		Database:       r.String(EnvDBName, ""),
		SSLMode:        r.String(EnvDBSSLMode, ""),
		Audience:       r.String(EnvAudience, ""),
		ServiceAccount: r.String(EnvServiceAccount, ""),
	}
	if r.Err() == nil {
		if err := c.Validate(); err != nil {
			r.Fail(err)
		}
	}
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("rotate config: %w", err)
	}
	return c, nil
}

// portString writes an unset port (copied from the secret) as nothing.
func portString(p int) string {
	if p == 0 {
		return ""
	}
	return strconv.Itoa(p)
}

// Validate checks the fields other than DB; zero durations count as their
// defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.Secret == "" {
		errs = append(errs, fmt.Errorf("%s is required: the secret to rotate, projects/P/secrets/S", EnvSecret))
	} else if !secretName(c.Secret) {
		errs = append(errs, fmt.Errorf("%s=%q is not a secret resource name projects/P/secrets/S (without /versions/)", EnvSecret, c.Secret))
	}
	if c.TTL < MinTTL {
		errs = append(errs, fmt.Errorf("%s=%s must be at least %s", EnvTTL, c.TTL, MinTTL))
	}
	if c.MinInterval < 0 {
		errs = append(errs, fmt.Errorf("%s must not be negative", EnvMinInterval))
	}
	if c.MinInterval >= c.TTL {
		errs = append(errs, fmt.Errorf("%s (%s) must be shorter than %s (%s)", EnvMinInterval, c.MinInterval, EnvTTL, c.TTL))
	}
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("%s=%d is out of range", EnvDBPort, c.Port))
	}
	probe := secrets.DBCredentials{Username: "u", Password: "p", Database: "d", SSLMode: c.SSLMode}
	if err := probe.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("%s=%q is not a libpq sslmode", EnvDBSSLMode, c.SSLMode))
	}
	if c.ServiceAccount != "" && c.Audience == "" {
		errs = append(errs, fmt.Errorf("%s is set but %s is not: verification needs the audience", EnvServiceAccount, EnvAudience))
	}
	return errors.Join(errs...)
}

// validateDB rejects a rotator that would log in with the credentials it
// rotates: it would lack apigee_rotate and lock itself out on failure.
func (c Config) validateDB() error {
	if c.DB.DBSecret != "" && strings.TrimSuffix(c.DB.DBSecret, "/versions/latest") == c.Secret {
		return fmt.Errorf("%s and %s name the same secret: the rotator needs its own apigee_rotate credentials", dbconn.EnvDBSecret, EnvSecret)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	return c
}

// secretName reports whether s is projects/P/secrets/S with no version.
func secretName(s string) bool {
	return secrets.ValidSecretName(s) && !strings.Contains(s, "/versions/")
}
