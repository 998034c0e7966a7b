// Command pseudonym prints what ingest stores for a personal value, so an
// operator can still find "all calls from 203.0.113.7" or "all calls of
// alice@example.com" in pseudonymised rows:
//
//	INGEST_PRIVACY_KEY_SECRET=projects/P/secrets/ingest-privacy-key \
//	  go run ./functions/ingest/cmd/pseudonym -tenant acme alice@example.com
//	p1:…	alice@example.com
//
// It reads the variables ingest reads (INGEST_PRIVACY, INGEST_PRIVACY_KEY_SECRET
// or INGEST_PRIVACY_KEY, INGEST_PRIVACY_IPV4_PREFIX, INGEST_PRIVACY_IPV6_PREFIX,
// SECRET_MANAGER_ENDPOINT), so it needs the same access to the key secret
// (roles/secretmanager.secretAccessor), and it gives the same answer as the
// function for the same key version. Without -field each value's hmac
// pseudonym is printed; with -field, the value as that field's column holds
// it under INGEST_PRIVACY (the truncated network of a client_ip, say), or
// nothing for a dropped field. With -payload, the digest a withheld
// quarantine payload records for the bytes read from standard input.
//
// The output is a column of stored forms then the value, tab-separated; the
// exit status is 2 on a configuration error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"apigee-timescale/shared/env"
	"apigee-timescale/shared/privacy"
)

func main() {
	tenant := flag.String("tenant", "", "the tenant whose key the pseudonyms are under (required)")
	field := flag.String("field", "", "print the value as this field's column stores it (client_ip, developer_email, identity.subject, identity.email)")
	payload := flag.Bool("payload", false, "print the digest a withheld quarantine payload records for standard input")
	flag.Parse()
	if err := run(os.Stdout, os.Stdin, *tenant, *field, *payload, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "pseudonym:", err)
		os.Exit(2)
	}
}

func run(out io.Writer, in io.Reader, tenant, field string, payload bool, values []string) error {
	if tenant == "" {
		return errors.New("-tenant is required: pseudonyms are per tenant")
	}
	r := env.New(os.Getenv)
	cfg := privacy.ConfigFrom(r)
	if err := r.Err(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := privacy.Load(ctx, cfg)
	if err != nil {
		return err
	}
	needKey := field == "" || cfg.Policy.Mode(field) == privacy.HMAC || payload
	if needKey && p.Keys() == nil {
		return fmt.Errorf("no key: set %s (or %s)", privacy.EnvKeySecret, privacy.EnvKey)
	}
	if payload {
		b, err := io.ReadAll(in)
		if err != nil {
			return fmt.Errorf("read standard input: %w", err)
		}
		_, err = fmt.Fprintf(out, "%s\t%d bytes\n", p.Digest(tenant, b), len(b))
		return err
	}
	if field != "" && !isPersonal(field) {
		return fmt.Errorf("-field %q is not a personal field", field)
	}
	for _, v := range values {
		var stored string
		if field == "" {
			stored = p.Keys().Pseudonym(tenant, v)
		} else if s, ok := p.Value(field, tenant, v); ok {
			stored = s
		} else {
			stored = "(not stored)"
		}
		if _, err := fmt.Fprintf(out, "%s\t%s\n", stored, v); err != nil {
			return err
		}
	}
	return nil
}

func isPersonal(key string) bool {
	for _, f := range privacy.PersonalFields() {
		if f.Key == key {
			return true
		}
	}
	return false
}
