package readers

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// resolve fills in each reader's role name, as the database derives it.
func resolve(ctx context.Context, tx pgx.Tx, want []Reader) error {
	ids := make([]string, len(want))
	for i, w := range want {
		ids[i] = w.AppID
	}
	var names []string
	err := tx.QueryRow(ctx, "SELECT array_agg(apigee.reader_role_name(id) ORDER BY n) FROM unnest($1::text[]) WITH ORDINALITY AS x(id, n)", ids).Scan(&names)
	if err != nil || len(names) != len(want) {
		return fmt.Errorf("readers: role names: %w (%d for %d apps)", err, len(names), len(want))
	}
	for i := range want {
		want[i].Role = names[i]
	}
	return nil
}

// checkDB refuses the readers whose role name is taken by a role the sync
// did not make (or that lost its marker), that name unknown tenants, or
// whose IAM user is not a login on the server. It returns the others.
func checkDB(ctx context.Context, tx pgx.Tx, want []Reader, have map[string]current, refused map[string]bool, refuse func(Reader, string)) ([]Reader, map[string]bool, error) {
	roles, tenants, users := []string{}, []string{}, []string{}
	for _, w := range want {
		roles = append(roles, w.Role)
		tenants = append(tenants, w.Tenants...)
		if w.IAMUser != "" {
			users = append(users, w.IAMUser)
		}
	}
	var existing, unknown, logins []string
	err := tx.QueryRow(ctx, `
SELECT (SELECT coalesce(array_agg(rolname::text), '{}') FROM pg_roles WHERE rolname = ANY ($1::text[])),
       apigee.unknown_tenants(ARRAY(SELECT DISTINCT unnest($2::text[]))),
       (SELECT coalesce(array_agg(rolname::text), '{}') FROM pg_roles WHERE rolname = ANY ($3::text[]) AND rolcanlogin AND NOT rolsuper)`,
		roles, tenants, users).Scan(&existing, &unknown, &logins)
	if err != nil {
		return nil, nil, fmt.Errorf("readers: check values: %w", err)
	}
	var ok []Reader
	for _, w := range want {
		_, ours := have[w.Role]
		var bad []string
		for _, t := range w.Tenants {
			if slices.Contains(unknown, t) {
				bad = append(bad, t)
			}
		}
		switch {
		case refused[w.AppID]:
		case slices.Contains(existing, w.Role) && !ours:
			refuse(w, fmt.Sprintf("role %s exists and was not made by the reader sync; not touched", w.Role))
		case len(bad) > 0:
			refuse(w, fmt.Sprintf("attribute %s names %d unknown tenant(s): %s (known: listed in apigee.known_tenants or with calls stored)",
				AttrTenants, len(bad), strings.Join(firstN(bad, 5), ", ")))
		case w.IAMUser != "" && !slices.Contains(logins, w.IAMUser):
			refuse(w, fmt.Sprintf("attribute %s names %s, which is not a login (non-superuser) on this server: add it with gcloud sql users create --type=cloud_iam_service_account",
				AttrIAMUser, quote(w.IAMUser)))
		default:
			ok = append(ok, w)
		}
	}
	return ok, refused, nil
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return append(slices.Clone(s[:n]), fmt.Sprintf("… (%d more)", len(s)-n))
	}
	return s
}
