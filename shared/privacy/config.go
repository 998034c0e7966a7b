// Package privacy pseudonymises the personal fields of an apigee.call.v1
// record (those the field table marks Personal) before ingest stores or
// hashes it: per field, keep it, replace it by a keyed pseudonym (hmac),
// truncate an address to its network (truncate) or drop it. The same rules
// rewrite what the quarantine keeps, so that no personal value reaches the
// database or the logs in clear.
//
// Pseudonyms are keyed per tenant (see Keys), so that one tenant's
// pseudonyms cannot be linked to another's, and destroying the key material
// makes them unlinkable to anyone (erasure by key).
package privacy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"apigee-timescale/shared/env"
	"apigee-timescale/shared/record"
	"apigee-timescale/shared/secrets"
)

// Environment variables read by ConfigFrom, with their defaults.
const (
	EnvPrivacy = "INGEST_PRIVACY"
	// DefaultPrivacy keeps every field as it came (the behaviour before
	// pseudonymisation existed); deployments turn it on explicitly.
	DefaultPrivacy   = ""
	EnvKeySecret     = "INGEST_PRIVACY_KEY_SECRET"
	EnvKey           = "INGEST_PRIVACY_KEY"
	EnvIPv4Prefix    = "INGEST_PRIVACY_IPV4_PREFIX"
	DefaultIPv4Bits  = 24
	EnvIPv6Prefix    = "INGEST_PRIVACY_IPV6_PREFIX"
	DefaultIPv6Bits  = 48
	EnvSecretManager = secrets.EndpointEnv
)

// MinKeyBytes is the shortest key material accepted: HMAC-SHA256 keys
// shorter than the hash add no strength and usually mean a typo.
const MinKeyBytes = 32

// Mode is what happens to one personal field.
type Mode uint8

// Modes. Keep is the zero value: a field not named in INGEST_PRIVACY is
// stored as it came.
const (
	Keep     Mode = iota
	HMAC          // a keyed pseudonym: equal values, equal pseudonyms, per tenant
	Truncate      // an address cut to its network (IPv4 /24, IPv6 /48 by default)
	Drop          // not stored at all (NULL)
)

var modeNames = [...]string{Keep: "keep", HMAC: "hmac", Truncate: "truncate", Drop: "drop"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("Mode(%d)", m)
}

// ConfigError is a privacy setting that cannot be used; Var names the
// variable to fix.
type ConfigError struct {
	Var string
	Msg string
}

func (e *ConfigError) Error() string { return e.Var + ": " + e.Msg }

// Policy is the mode of every personal field, and the truncation widths.
type Policy struct {
	// Modes by field key (client_ip, forwarded_client_ip, developer_email, identity.subject,
	// identity.email); absent means Keep.
	Modes    map[string]Mode
	IPv4Bits int
	IPv6Bits int
}

// Mode returns the mode of the field key.
func (p Policy) Mode(key string) Mode { return p.Modes[key] }

// Active reports whether any field is not kept as it came.
func (p Policy) Active() bool {
	for _, m := range p.Modes {
		if m != Keep {
			return true
		}
	}
	return false
}

// NeedsKey reports whether some field is pseudonymised.
func (p Policy) NeedsKey() bool {
	for _, m := range p.Modes {
		if m == HMAC {
			return true
		}
	}
	return false
}

// String writes the policy as INGEST_PRIVACY reads it, fields in table
// order, kept fields left out.
func (p Policy) String() string {
	var parts []string
	for _, f := range PersonalFields() {
		if m := p.Modes[f.Key]; m != Keep {
			parts = append(parts, f.Key+"="+m.String())
		}
	}
	return strings.Join(parts, ",")
}

// PersonalFields returns the fields of the record table marked Personal.
func PersonalFields() []record.Field {
	var out []record.Field
	for _, f := range record.Fields() {
		if f.Personal {
			out = append(out, f)
		}
	}
	return out
}

// ParsePolicy reads INGEST_PRIVACY: comma-separated field=mode pairs. It
// refuses a field that is not personal, a mode the field cannot take
// (truncate is for addresses; an inet column cannot hold a pseudonym) and a
// field named twice.
func ParsePolicy(s string) (Policy, error) {
	p := Policy{Modes: map[string]Mode{}, IPv4Bits: DefaultIPv4Bits, IPv6Bits: DefaultIPv6Bits}
	kinds := map[string]record.Kind{}
	for _, f := range PersonalFields() {
		kinds[f.Key] = f.Kind
	}
	var errs []error
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		key, name, ok := strings.Cut(item, "=")
		key, name = strings.TrimSpace(key), strings.TrimSpace(name)
		mode := Mode(slices.Index(modeNames[:], name))
		kind, personal := kinds[key]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%q is not field=mode", item))
		case !personal:
			errs = append(errs, fmt.Errorf("%q is not a personal field (want one of %s)", key, personalKeys()))
		case !slices.Contains(modeNames[:], name):
			errs = append(errs, fmt.Errorf("%s: unknown mode %q (want keep, hmac, truncate or drop)", key, name))
		case kind == record.KindIP && mode == HMAC:
			errs = append(errs, fmt.Errorf("%s cannot be hmac: its column is inet, which cannot hold a pseudonym; use truncate or drop", key))
		case kind != record.KindIP && mode == Truncate:
			errs = append(errs, fmt.Errorf("%s cannot be truncate: only addresses are truncated; use hmac or drop", key))
		default:
			if _, dup := p.Modes[key]; dup {
				errs = append(errs, fmt.Errorf("%s is named twice", key))
			}
			p.Modes[key] = mode
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Policy{}, &ConfigError{Var: EnvPrivacy, Msg: strings.ReplaceAll(err.Error(), "\n", "; ")}
	}
	return p, nil
}

func personalKeys() string {
	var keys []string
	for _, f := range PersonalFields() {
		keys = append(keys, f.Key)
	}
	return strings.Join(keys, ", ")
}

// Config is the privacy part of ingest's configuration; the pseudonym
// command reads the same variables.
type Config struct {
	// Policy (INGEST_PRIVACY, INGEST_PRIVACY_IPV4_PREFIX,
	// INGEST_PRIVACY_IPV6_PREFIX).
	Policy Policy
	// KeySecret (INGEST_PRIVACY_KEY_SECRET): the Secret Manager secret
	// (projects/P/secrets/S, read at latest) or version whose payload is
	// the key material (see ParseKeys).
	KeySecret string
	// Key (INGEST_PRIVACY_KEY): the key material itself, for local runs.
	Key string
	// SecretManagerEndpoint (SECRET_MANAGER_ENDPOINT): a local Secret
	// Manager; empty: production.
	SecretManagerEndpoint string
}

// ConfigFrom reads the privacy configuration through r; problems are
// recorded in r (each a *ConfigError or *env.ParseError naming its
// variable).
func ConfigFrom(r *env.Reader) Config {
	c := Config{
		KeySecret:             r.String(EnvKeySecret, ""),
		Key:                   r.String(EnvKey, ""),
		SecretManagerEndpoint: r.String(EnvSecretManager, ""),
	}
	spec := r.String(EnvPrivacy, DefaultPrivacy)
	v4 := r.Int(EnvIPv4Prefix, DefaultIPv4Bits, 0)
	v6 := r.Int(EnvIPv6Prefix, DefaultIPv6Bits, 0)
	p, err := ParsePolicy(spec)
	if err != nil {
		r.Fail(err)
	}
	p.IPv4Bits, p.IPv6Bits = v4, v6
	c.Policy = p
	if v4 > 32 {
		r.Fail(&ConfigError{Var: EnvIPv4Prefix, Msg: fmt.Sprintf("%d is longer than an IPv4 address (32 bits)", v4)})
	}
	if v6 > 128 {
		r.Fail(&ConfigError{Var: EnvIPv6Prefix, Msg: fmt.Sprintf("%d is longer than an IPv6 address (128 bits)", v6)})
	}
	if err := c.checkKey(); err != nil {
		r.Fail(err)
	}
	return c
}

// checkKey refuses a pseudonymising policy without a key, two keys, and a
// key too short or a secret name that is not one.
func (c Config) checkKey() error {
	switch {
	case c.KeySecret != "" && c.Key != "":
		return &ConfigError{Var: EnvKey, Msg: "set " + EnvKey + " (local runs) or " + EnvKeySecret + ", not both"}
	case c.KeySecret != "" && !secrets.ValidSecretName(c.KeySecret):
		return &ConfigError{Var: EnvKeySecret, Msg: "want projects/P/secrets/S or projects/P/secrets/S/versions/V"}
	case c.Key != "" && len(c.Key) < MinKeyBytes:
		return &ConfigError{Var: EnvKey, Msg: fmt.Sprintf("the key is %d bytes, at least %d are needed", len(c.Key), MinKeyBytes)}
	case c.Policy.NeedsKey() && c.KeySecret == "" && c.Key == "":
		return &ConfigError{Var: EnvPrivacy, Msg: "hmac needs a key: set " + EnvKeySecret + " (or " + EnvKey + " for local runs)"}
	}
	return nil
}
