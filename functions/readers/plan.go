package readers

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The custom attributes of an Apigee app that the sync reads.
const (
	// AttrReader "true" makes the app a reader; absent or "false": not.
	AttrReader = "timescale_reader"
	// AttrTenants lists the tenants it may read, comma-separated.
	AttrTenants = "timescale_tenants"
	// AttrIAMUser names the Cloud SQL IAM database user that logs in for
	// it (a member of its role); absent: the role has no login.
	AttrIAMUser = "timescale_iam_user"
)

// Limits on what an app may carry; beyond them it is refused.
const (
	maxAppIDBytes   = 128
	maxAppNameBytes = 255
	// maxIdentifier is PostgreSQL's NAMEDATALEN - 1: a longer name would be
	// truncated silently, and could then name another role.
	maxIdentifier = 63
)

var (
	// tenantName: the tenants a reader may be granted. Tenants come from
	// the shared flow (timescale.tenant, the organization by default);
	// anything outside this set is refused rather than quoted anywhere.
	tenantName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
	// iamUser: a Cloud SQL IAM database user, an email (a service
	// account's without .gserviceaccount.com).
	iamUser = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9][A-Za-z0-9.-]*$`)
)

// Reader is the state an app asks for.
type Reader struct {
	AppID, App string
	Role       string
	Tenants    []string // sorted, distinct
	IAMUser    string   // "": no login
}

// Refusal names an app the sync will not mirror, and why. Whatever the app
// had before stays as it was.
type Refusal struct {
	AppID  string `json:"app_id"`
	App    string `json:"app,omitempty"`
	Role   string `json:"role,omitempty"`
	Reason string `json:"reason"`
}

// Change is one role the run creates, updates or drops.
type Change struct {
	Action      string   `json:"action"`
	Role        string   `json:"role"`
	AppID       string   `json:"app_id"`
	App         string   `json:"app,omitempty"`
	Grant       []string `json:"grant,omitempty"`
	Revoke      []string `json:"revoke,omitempty"`
	IAMUser     string   `json:"iam_user,omitempty"`
	DropMembers []string `json:"drop_members,omitempty"`
}

// Change.Action values.
const (
	ActionCreate = "create"
	ActionUpdate = "update"
	ActionDrop   = "drop"
)

// wanted reads an app's attributes: whether it is a reader, and if so
// what it asks for. A non-empty refusal says why the app is not mirrored.
func wanted(app App, maxTenants int) (r Reader, isReader bool, refusal string) {
	attrs := map[string]string{}
	for _, a := range app.Attributes {
		if a.Name != AttrReader && a.Name != AttrTenants && a.Name != AttrIAMUser {
			continue
		}
		if _, dup := attrs[a.Name]; dup {
			return Reader{}, false, fmt.Sprintf("attribute %s is set twice", a.Name)
		}
		if why := badText(a.Value); why != "" {
			return Reader{}, false, fmt.Sprintf("attribute %s %s", a.Name, why)
		}
		attrs[a.Name] = a.Value
	}
	switch v := strings.TrimSpace(attrs[AttrReader]); v {
	case "", "false":
		return Reader{}, false, ""
	case "true":
	default:
		return Reader{}, false, fmt.Sprintf("attribute %s is %s, want true or false", AttrReader, quote(v))
	}
	if why := checkApp(app); why != "" {
		return Reader{}, true, why
	}
	r = Reader{AppID: app.ID, App: app.Name, IAMUser: strings.TrimSpace(attrs[AttrIAMUser])}
	tenants, why := parseTenants(attrs[AttrTenants], maxTenants)
	if why != "" {
		return Reader{}, true, why
	}
	r.Tenants = tenants
	if r.IAMUser != "" && (len(r.IAMUser) > maxIdentifier || !iamUser.MatchString(r.IAMUser)) {
		return Reader{}, true, fmt.Sprintf("attribute %s is %s: not a Cloud SQL IAM database user name (an email, at most %d bytes)",
			AttrIAMUser, quote(r.IAMUser), maxIdentifier)
	}
	return r, true, ""
}

func checkApp(app App) string {
	switch {
	case app.ID == "":
		return "the app has no appId"
	case len(app.ID) > maxAppIDBytes:
		return fmt.Sprintf("appId is %d bytes, at most %d", len(app.ID), maxAppIDBytes)
	case badText(app.ID) != "":
		return "appId " + badText(app.ID)
	case len(app.Name) > maxAppNameBytes:
		return fmt.Sprintf("the app's name is %d bytes, at most %d", len(app.Name), maxAppNameBytes)
	case badText(app.Name) != "":
		return "the app's name " + badText(app.Name)
	}
	return ""
}

// parseTenants splits a timescale_tenants value: comma-separated, spaces
// around names and empty entries ignored, duplicates merged.
func parseTenants(v string, maxTenants int) ([]string, string) {
	// Bound the work before splitting: 10,000 tenants are refused by their
	// bytes alone.
	if limit := maxTenants * 130; len(v) > limit {
		return nil, fmt.Sprintf("attribute %s is %d bytes: more than %d tenants", AttrTenants, len(v), maxTenants)
	}
	var out []string
	for _, t := range strings.Split(v, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if !tenantName.MatchString(t) {
			return nil, fmt.Sprintf("attribute %s names %s: a tenant is 1 to 128 letters, digits, '.', '_', ':' or '-'", AttrTenants, quote(t))
		}
		out = append(out, t)
	}
	slices.Sort(out)
	out = slices.Compact(out)
	switch {
	case len(out) == 0:
		return nil, fmt.Sprintf("attribute %s names no tenant", AttrTenants)
	case len(out) > maxTenants:
		return nil, fmt.Sprintf("attribute %s names %d tenants, at most %d", AttrTenants, len(out), maxTenants)
	}
	return out, ""
}

// badText says what is wrong with a value that is not clean text: invalid
// UTF-8 (which JSON decoding turns into U+FFFD) or control characters.
func badText(s string) string {
	if !utf8.ValidString(s) || strings.ContainsRune(s, utf8.RuneError) {
		return "is not valid UTF-8"
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return "contains control characters"
	}
	return ""
}

// quote shows a value in a refusal: quoted, and cut short.
func quote(s string) string {
	const max = 40
	if len(s) > max {
		return fmt.Sprintf("%q… (%d bytes)", s[:max], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// current is a synced role as the database has it.
type current struct {
	Role, AppID, App string
	Exists, Marked   bool // the role exists; it is a member of apigee_app_reader
	Reader           bool // it is a member of apigee_reader
	Tenants, Members []string
}

// diff is the plan: what to change so that the database holds want, given
// have (by role). Roles of refused apps are left alone.
func diff(want []Reader, have map[string]current, refused map[string]bool) []Change {
	var changes []Change
	seen := map[string]bool{}
	for _, w := range want {
		seen[w.Role] = true
		h, ok := have[w.Role]
		if !ok || !h.Exists {
			changes = append(changes, Change{Action: ActionCreate, Role: w.Role, AppID: w.AppID, App: w.App, Grant: w.Tenants, IAMUser: w.IAMUser})
			continue
		}
		c := Change{Action: ActionUpdate, Role: w.Role, AppID: w.AppID, App: w.App, IAMUser: w.IAMUser}
		c.Grant, c.Revoke = missing(w.Tenants, h.Tenants), missing(h.Tenants, w.Tenants)
		members := []string{}
		if w.IAMUser != "" {
			members = append(members, w.IAMUser)
		}
		c.DropMembers = missing(h.Members, members)
		if len(c.Grant)+len(c.Revoke)+len(c.DropMembers) > 0 || !slices.Contains(h.Members, w.IAMUser) && w.IAMUser != "" ||
			!h.Reader || h.App != w.App {
			changes = append(changes, c)
		}
	}
	for _, h := range sortedCurrent(have) {
		if seen[h.Role] || refused[h.AppID] {
			continue
		}
		changes = append(changes, Change{Action: ActionDrop, Role: h.Role, AppID: h.AppID, App: h.App, Revoke: h.Tenants, DropMembers: h.Members})
	}
	return changes
}

// missing returns the elements of a not in b.
func missing(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func sortedCurrent(m map[string]current) []current {
	out := make([]current, 0, len(m))
	for _, c := range m {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b current) int { return strings.Compare(a.Role, b.Role) })
	return out
}
