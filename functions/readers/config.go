package readers

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"time"

	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/env"
)

// Environment variables read by ConfigFromEnv, besides the shared/dbconn
// ones that say how the sync reaches the database (as a login in
// apigee_reader_sync); each with its default when it has one: the one place
// they are declared (the README's table is checked against them).
const (
	EnvOrg             = "READERS_APIGEE_ORG"
	EnvEndpoint        = "READERS_APIGEE_ENDPOINT"
	EnvDryRun          = "READERS_DRY_RUN"
	DefaultDryRun      = false
	EnvMaxTenants      = "READERS_MAX_TENANTS"
	DefaultMaxTenants  = 100
	EnvTimeout         = "READERS_TIMEOUT"
	DefaultTimeout     = 2 * time.Minute
	EnvAudience        = "READERS_AUDIENCE"
	EnvServiceAccount  = "READERS_SERVICE_ACCOUNT"
	maxTenantsCeiling  = 1000 // apigee.reader_role_put refuses more
	defaultApplication = "apigee-readers"
)

// orgName is an Apigee organization name (a Google Cloud project ID, or a
// hybrid organization's name): lowercase letters, digits and hyphens.
var orgName = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

// Config is the readers function's configuration.
type Config struct {
	// Org (READERS_APIGEE_ORG, required) is the Apigee organization whose
	// apps are mirrored.
	Org string
	// Endpoint (READERS_APIGEE_ENDPOINT) is the base URL of a stand-in of
	// the Apigee API, reached without credentials; empty: the production
	// API with the function's service account.
	Endpoint string
	// DryRun (READERS_DRY_RUN): every run computes and answers its plan and
	// changes nothing.
	DryRun bool
	// MaxTenants (READERS_MAX_TENANTS, DefaultMaxTenants, at most 1000): an
	// app listing more tenants is refused.
	MaxTenants int
	// Timeout (READERS_TIMEOUT, DefaultTimeout) bounds one run.
	Timeout time.Duration
	// Audience (READERS_AUDIENCE) turns on OIDC verification of every
	// request (the Cloud Scheduler job's token `aud`); empty: off, warned.
	Audience string
	// ServiceAccount (READERS_SERVICE_ACCOUNT): the only caller email
	// accepted, with Audience.
	ServiceAccount string

	// DB is how the sync connects: a login in apigee_reader_sync.
	DB dbconn.Config
}

// ConfigFromEnv reads and validates the configuration.
func ConfigFromEnv() (Config, error) { return ConfigFrom(env.New(os.Getenv)) }

// ConfigFrom is ConfigFromEnv through r.
func ConfigFrom(r *env.Reader) (Config, error) {
	c := Config{
		Org:            r.String(EnvOrg, ""),
		Endpoint:       r.String(EnvEndpoint, ""),
		DryRun:         r.Bool(EnvDryRun, DefaultDryRun),
		MaxTenants:     r.Int(EnvMaxTenants, DefaultMaxTenants, 1),
		Timeout:        r.Duration(EnvTimeout, DefaultTimeout, time.Nanosecond),
		Audience:       r.String(EnvAudience, ""),
		ServiceAccount: r.String(EnvServiceAccount, ""),
	}
	if r.Err() == nil {
		if err := c.Validate(); err != nil {
			r.Fail(err)
		}
	}
	db, dbErr := dbconn.ConfigFrom(r)
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("readers config: %w", err)
	}
	if dbErr != nil {
		return Config{}, fmt.Errorf("readers config: %w", dbErr)
	}
	c.DB = db
	return c, nil
}

// Validate checks the fields other than DB; zero values count as defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.Org == "" {
		errs = append(errs, fmt.Errorf("%s is required: the Apigee organization whose apps are mirrored", EnvOrg))
	} else if !orgName.MatchString(c.Org) {
		errs = append(errs, fmt.Errorf("%s=%q is not an Apigee organization name", EnvOrg, c.Org))
	}
	if c.Endpoint != "" {
		if u, err := url.Parse(c.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("%s=%q is not an http(s) URL", EnvEndpoint, c.Endpoint))
		}
	}
	if c.MaxTenants > maxTenantsCeiling {
		errs = append(errs, fmt.Errorf("%s=%d is above %d", EnvMaxTenants, c.MaxTenants, maxTenantsCeiling))
	}
	if c.ServiceAccount != "" && c.Audience == "" {
		errs = append(errs, fmt.Errorf("%s is set but %s is not: verification needs the audience", EnvServiceAccount, EnvAudience))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.MaxTenants == 0 {
		c.MaxTenants = DefaultMaxTenants
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	return c
}
