package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/functions/ingest"
	"apigee-timescale/shared/privacy"
)

// PersonalRow is one stored combination of the personal columns, as the
// report shows them: pseudonyms and networks, not addresses and emails.
type PersonalRow struct {
	ClientIP, DeveloperEmail string
	Tenant                   string
	Calls                    int64
}

// PrivacyReport is what the demo found of the simulator's personal data.
type PrivacyReport struct {
	Policy string // INGEST_PRIVACY as applied; "" when off
	Sample []PersonalRow
	// In clear: rows whose personal columns are not what the policy
	// stores, quarantined rows and log lines holding one of the
	// simulator's addresses or emails.
	ClearRows, ClearRejects, ClearLogLines int64
}

// The simulator draws addresses from the documentation ranges and its
// developers' emails end in .example: patterns a pseudonym (base64url) or
// a truncated network cannot match. Both Go and PostgreSQL read them.
var (
	clearIP    = regexp.MustCompile(`(192\.0\.2|198\.51\.100|203\.0\.113)\.[1-9]|2001:db8::[0-9a-f]`)
	clearEmail = regexp.MustCompile(`@[A-Za-z0-9.-]+\.example`)
)

// setupPrivacy turns pseudonymisation on as a new deployment has it
// (unless INGEST_PRIVACY says otherwise): the policy of -privacy, and a
// random key in the local Secret Manager, read through the real client as
// the deployed function reads INGEST_PRIVACY_KEY_SECRET.
func (d *demo) setupPrivacy(ctx context.Context, cfg *ingest.Config) (*privacy.Pseudonymiser, error) {
	if os.Getenv(privacy.EnvPrivacy) == "" {
		p, err := privacy.ParsePolicy(d.o.privacy)
		if err != nil {
			return nil, fmt.Errorf("-privacy: %w", err)
		}
		p.IPv4Bits, p.IPv6Bits = cfg.Privacy.Policy.IPv4Bits, cfg.Privacy.Policy.IPv6Bits
		cfg.Privacy.Policy = p
	}
	if cfg.Privacy.Policy.NeedsKey() && cfg.Privacy.Key == "" && cfg.Privacy.KeySecret == "" {
		name := "projects/" + project + "/secrets/ingest-privacy-key"
		version, err := d.sm.PutPrivacyKey(name)
		if err != nil {
			return nil, err
		}
		cfg.Privacy.KeySecret, cfg.Privacy.SecretManagerEndpoint = name, d.sm.Addr
		d.step("privacy: INGEST_PRIVACY=%s; pseudonym key %s (random, INGEST_PRIVACY_KEY_SECRET)", cfg.Privacy.Policy, version)
	} else {
		d.step("privacy: INGEST_PRIVACY=%q", cfg.Privacy.Policy.String())
	}
	d.privacy = cfg.Privacy.Policy
	return privacy.Load(ctx, cfg.Privacy)
}

// collectPrivacy samples the personal columns and searches the tables and
// the functions' logs for the simulator's personal values.
func (d *demo) collectPrivacy(ctx context.Context, pattern string) (PrivacyReport, error) {
	r := PrivacyReport{Policy: d.privacy.String()}
	db := d.db.Admin
	rows, err := db.Query(ctx, `
		SELECT coalesce(host(client_ip), ''), coalesce(developer_email, ''), tenant, count(*)
		FROM apigee.api_calls WHERE message_id LIKE $1
		GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3 LIMIT 8`, pattern)
	if err != nil {
		return r, fmt.Errorf("report: personal columns: %w", err)
	}
	var p PersonalRow
	if _, err := pgx.ForEachRow(rows, []any{&p.ClientIP, &p.DeveloperEmail, &p.Tenant, &p.Calls}, func() error {
		r.Sample = append(r.Sample, p)
		return nil
	}); err != nil {
		return r, fmt.Errorf("report: personal columns: %w", err)
	}
	if !d.privacy.Active() {
		return r, nil
	}
	if cond := notAsStored(d.privacy); cond != "" {
		if err := db.QueryRow(ctx, `SELECT count(*) FROM apigee.api_calls WHERE message_id LIKE $1 AND (`+cond+`)`,
			pattern, d.privacy.IPv4Bits, d.privacy.IPv6Bits).Scan(&r.ClearRows); err != nil {
			return r, fmt.Errorf("report: personal columns in clear: %w", err)
		}
	}
	re := d.clearPattern()
	if err := db.QueryRow(ctx, `SELECT count(*) FROM apigee.ingest_rejects
		WHERE ingested_at >= $1 AND (encode(payload, 'escape') || ' ' || detail) ~ $2`, d.runStart, re.String()).Scan(&r.ClearRejects); err != nil {
		return r, fmt.Errorf("report: quarantine in clear: %w", err)
	}
	if r.ClearLogLines, err = grepLogs(d.logDir, re); err != nil {
		return r, err
	}
	return r, nil
}

// notAsStored is the SQL condition of a row whose personal columns are not
// what the policy stores ($2, $3: the truncation widths).
func notAsStored(p privacy.Policy) string {
	var or []string
	for _, f := range privacy.PersonalFields() {
		switch p.Mode(f.Key) {
		case privacy.Drop:
			or = append(or, f.Column+" IS NOT NULL")
		case privacy.HMAC:
			or = append(or, f.Column+" NOT LIKE '"+privacy.PseudonymPrefix+"%'")
		case privacy.Truncate:
			or = append(or, "host("+f.Column+") <> host(network(set_masklen("+f.Column+
				", CASE WHEN family("+f.Column+") = 4 THEN $2::int ELSE $3::int END)))")
		}
	}
	return strings.Join(or, " OR ")
}

// clearPattern matches the simulator's values of the fields the policy
// does not keep.
func (d *demo) clearPattern() *regexp.Regexp {
	var alt []string
	if d.privacy.Mode("client_ip") != privacy.Keep {
		alt = append(alt, clearIP.String())
	}
	if d.privacy.Mode("developer_email") != privacy.Keep || d.privacy.Mode("identity.email") != privacy.Keep {
		alt = append(alt, clearEmail.String())
	}
	if len(alt) == 0 {
		return regexp.MustCompile(`$.^`) // matches nothing
	}
	return regexp.MustCompile(strings.Join(alt, "|"))
}

// grepLogs counts the lines of the functions' logs (not the built
// binaries) that match re.
func grepLogs(dir string, re *regexp.Regexp) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			if e.Name() == "bin" {
				return filepath.SkipDir
			}
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if re.MatchString(line) {
				n++
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("report: grep logs: %w", err)
	}
	return n, nil
}
