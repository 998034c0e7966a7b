package readers

import (
	"slices"
	"strings"
	"testing"
)

// TestWanted: what an app's attributes ask for, without a database.
func TestWanted(t *testing.T) {
	app := func(attrs ...string) App {
		a := App{ID: "id-1", Name: "n"}
		for i := 0; i < len(attrs); i += 2 {
			a.Attributes = append(a.Attributes, Attribute{Name: attrs[i], Value: attrs[i+1]})
		}
		return a
	}
	cases := []struct {
		name     string
		app      App
		reader   bool
		tenants  []string
		iam      string
		refusal  string
		maxCount int
	}{
		{name: "no attributes", app: app()},
		{name: "false", app: app(AttrReader, "false", AttrTenants, "acme")},
		{name: "reader", app: app(AttrReader, "true", AttrTenants, "globex, acme,acme,", AttrIAMUser, "sa@p.iam"), reader: true, tenants: []string{"acme", "globex"}, iam: "sa@p.iam"},
		{name: "other attributes ignored", app: app("x", "\xff", AttrReader, "true", AttrTenants, "a"), reader: true, tenants: []string{"a"}},
		{name: "TRUE is not true", app: app(AttrReader, "TRUE"), refusal: "want true or false"},
		{name: "max tenants", app: app(AttrReader, "true", AttrTenants, "a,b,c"), maxCount: 2, refusal: "names 3 tenants, at most 2"},
		{name: "bytes before splitting", app: app(AttrReader, "true", AttrTenants, strings.Repeat("a,", 1000)), maxCount: 2, refusal: "more than 2 tenants"},
		{name: "no app id", app: App{Attributes: app(AttrReader, "true", AttrTenants, "a").Attributes}, refusal: "no appId"},
		{name: "SQL in a tenant", app: app(AttrReader, "true", AttrTenants, "a'||pg_sleep(1)||'"), refusal: "a tenant is"},
		{name: "identifier too long", app: app(AttrReader, "true", AttrTenants, "a", AttrIAMUser, strings.Repeat("u", 64)+"@p"), refusal: "at most 63 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.maxCount == 0 {
				c.maxCount = 100
			}
			r, isReader, why := wanted(c.app, c.maxCount)
			if c.refusal != "" {
				if !strings.Contains(why, c.refusal) {
					t.Fatalf("refusal %q, want %q", why, c.refusal)
				}
				return
			}
			if why != "" || isReader != c.reader || !slices.Equal(r.Tenants, c.tenants) || r.IAMUser != c.iam {
				t.Fatalf("got %+v reader=%v refusal=%q", r, isReader, why)
			}
		})
	}
}
