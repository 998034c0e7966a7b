package gcp_test

// The fakes of gcloud, curl (the Apigee management API), migrate and dblogin
// that deploy.sh runs in these tests. They are this test binary itself,
// reached through symlinks named after each tool (TestMain dispatches on the
// name). Each records its argv in FAKE_STATE/calls.jsonl and keeps the
// resources it was asked to create in FAKE_STATE, so a describe, list or
// get-iam-policy answers from what earlier calls (or the test) put there.
//
// Where the real services behave in a way that has broken deployments, the
// fakes do the same, each citing the public page or thread it imitates
// (deploy/gcp/README.md, "What the stand-ins imitate", lists them all):
//   - a log-based metric younger than FAKE_METRIC_DELAY is unknown to Cloud
//     Monitoring: an alert policy naming it gets the documented 404;
//   - the Pub/Sub service agent does not exist until `gcloud beta services
//     identity create --service=pubsub.googleapis.com` creates it;
//   - Google's front end answers 411 to a POST without a body;
//   - the environment's deployments list carries no serviceAccount; the
//     revision's getDeployments does.

import (
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// fakeToken is what the fake `gcloud auth print-access-token` prints.
const fakeToken = "ya29.fake-access-token-0123456789"

// call is one recorded invocation.
type call struct {
	Tool string   `json:"tool"`
	Argv []string `json:"argv"`
	// Caller is the script that ran the tool (from the parent's command line).
	Caller string `json:"caller,omitempty"`
	// Env holds the SHA-256 of selected environment variables, never values.
	Env map[string]string `json:"env,omitempty"`
}

// fakeMain runs the fake named by argv[0] and returns its exit status.
func fakeMain(tool string, args []string) int {
	state := os.Getenv("FAKE_STATE")
	if state == "" {
		fmt.Fprintln(os.Stderr, "fake: FAKE_STATE is not set")
		return 2
	}
	f := &fake{state: state, stdout: os.Stdout, stderr: os.Stderr}
	c := call{Tool: tool, Argv: args, Caller: parentScript()}
	if tool == "migrate" || tool == "dblogin" {
		c.Env = map[string]string{
			"DATABASE_URL":   digest(os.Getenv("DATABASE_URL")),
			"APIGEE_STORAGE": os.Getenv("APIGEE_STORAGE"),
		}
	}
	if err := f.record(c); err != nil {
		fmt.Fprintln(os.Stderr, "fake:", err)
		return 2
	}
	var err error
	switch tool {
	case "gcloud":
		err = f.gcloud(args)
	case "curl":
		err = f.curl(args)
	case "migrate":
		if len(args) != 1 || args[0] != "up" {
			err = fmt.Errorf("migrate: want the single argument up, got %q", args)
		} else {
			fmt.Fprintln(f.stdout, "nothing to apply")
			// What migrate up prints last: max_connections less the
			// reserved slots (FAKE_DB_CONNECTIONS, as a server's settings).
			fmt.Fprintf(f.stdout, "connections available: %s\n", cmp.Or(os.Getenv("FAKE_DB_CONNECTIONS"), "497"))
		}
	case "dblogin":
		err = f.dblogin(args)
	default:
		err = fmt.Errorf("no fake named %s", tool)
	}
	var ex exitError
	switch {
	case errors.As(err, &ex):
		fmt.Fprintln(f.stderr, ex.msg)
		return ex.code
	case err != nil:
		fmt.Fprintln(f.stderr, "fake "+tool+":", err)
		return 2
	}
	return 0
}

// exitError is an expected failure (NOT_FOUND, HTTP error) with its status.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func notFound(what string) error { return exitError{1, "ERROR: (gcloud) NOT_FOUND: " + what} }

type fake struct {
	state          string
	stdout, stderr io.Writer
}

func (f *fake) record(c call) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	fh, err := os.OpenFile(filepath.Join(f.state, "calls.jsonl"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer fh.Close()
	_, err = fh.Write(append(b, '\n'))
	return err
}

// parentScript names the script (…/deploy/<dir>/<file>.sh) in the parent's
// command line, or "".
func parentScript() string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", os.Getppid()))
	if err != nil {
		return ""
	}
	for _, a := range strings.Split(string(b), "\x00") {
		if strings.HasSuffix(a, ".sh") {
			parts := strings.Split(filepath.ToSlash(a), "/")
			if len(parts) >= 3 {
				return strings.Join(parts[len(parts)-3:], "/")
			}
			return a
		}
	}
	return ""
}

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// ---------------------------------------------------------------------------
// Resources: FAKE_STATE/res/<kind>/<name>.json, a flat map of fields
// ("labels.app", "description", "flag.ack-deadline", ...).

type resource map[string]string

func (f *fake) resPath(kind, name string) string {
	return filepath.Join(f.state, "res", kind, url.PathEscape(name)+".json")
}

func (f *fake) load(kind, name string) (resource, bool, error) {
	b, err := os.ReadFile(f.resPath(kind, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	r := resource{}
	return r, true, json.Unmarshal(b, &r)
}

func (f *fake) save(kind, name string, r resource) error {
	p := f.resPath(kind, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(p, b, 0o600)
}

// list returns the names of every resource of kind.
func (f *fake) list(kind string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(f.state, "res", kind))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	var names []string
	for _, e := range entries {
		n, err := url.PathUnescape(strings.TrimSuffix(e.Name(), ".json"))
		if err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	sort.Strings(names)
	return names, err
}

// ---------------------------------------------------------------------------
// gcloud

// groups are the command groups deploy.sh uses, longest first.
var groups = [][]string{
	{"beta", "services", "identity"},
	{"beta", "monitoring", "policies"},
	{"monitoring", "policies"},
	{"iam", "service-accounts"},
	{"pubsub", "topics"},
	{"pubsub", "subscriptions"},
	{"secrets", "versions"},
	{"run", "services"},
	{"scheduler", "jobs"},
	{"logging", "metrics"},
	{"projects"}, {"services"}, {"secrets"}, {"functions"}, {"auth"},
}

// mutating are the verbs that change something.
var mutating = map[string]bool{
	"create": true, "update": true, "deploy": true, "add-iam-policy-binding": true,
	"enable": true, "add": true, "delete": true, "run": true, "remove-iam-policy-binding": true,
}

// gcloudCmd is a parsed gcloud command line.
type gcloudCmd struct {
	kind  string // e.g. "pubsub topics"
	verb  string
	name  string
	extra []string // positionals after the name
	flags map[string]string
	bools map[string]bool
}

func parseGcloud(args []string) (gcloudCmd, error) {
	c := gcloudCmd{flags: map[string]string{}, bools: map[string]bool{}}
	var pos []string
	for _, a := range args {
		switch {
		case strings.HasPrefix(a, "--"):
			if k, v, ok := strings.Cut(a[2:], "="); ok {
				if _, dup := c.flags[k]; dup {
					return c, fmt.Errorf("flag --%s given twice", k)
				}
				c.flags[k] = v
			} else {
				c.bools[a[2:]] = true
			}
		case strings.HasPrefix(a, "-"):
			return c, fmt.Errorf("short flag %q: deploy.sh spells flags --name=value", a)
		default:
			pos = append(pos, a)
		}
	}
	if slices.Equal(pos, []string{"version"}) {
		c.kind = "version"
		return c, nil
	}
	for _, g := range groups {
		if len(pos) > len(g) && slices.Equal(pos[:len(g)], g) {
			c.kind = strings.Join(g, " ")
			pos = pos[len(g):]
			break
		}
		if len(pos) == len(g) && slices.Equal(pos, g) {
			return c, fmt.Errorf("no verb after %q", g)
		}
	}
	if c.kind == "" {
		return c, fmt.Errorf("unknown command %q", pos)
	}
	c.verb, pos = pos[0], pos[1:]
	if c.kind == "scheduler jobs" && (c.verb == "create" || c.verb == "update") {
		if len(pos) == 0 || pos[0] != "http" {
			return c, fmt.Errorf("scheduler jobs %s: want an http job", c.verb)
		}
		pos = pos[1:]
	}
	if len(pos) > 0 {
		c.name, c.extra = pos[0], pos[1:]
	}
	return c, nil
}

// sdkVersion is what the fake `gcloud version` reports: a release in which
// `gcloud functions deploy` makes 2nd gen functions without --gen2.
const sdkVersion = "530.0.0"

func (f *fake) gcloud(args []string) error {
	if slices.Contains(args, "version") {
		// gcloud version --format=json: {"Google Cloud SDK": "X.Y.Z", component: version…}
		if !slices.Contains(args, "--format=json") {
			return fmt.Errorf("version: deploy.sh reads --format=json, got %q", args)
		}
		fmt.Fprintf(f.stdout, "{\n  \"Google Cloud SDK\": %q,\n  \"beta\": \"2025.01.01\",\n  \"core\": \"2025.01.01\"\n}\n", sdkVersion)
		return nil
	}
	c, err := parseGcloud(args)
	if err != nil {
		return err
	}
	if c.kind != "auth" && (!c.bools["quiet"] || c.flags["project"] == "") {
		return errors.New("every call must carry --quiet and --project")
	}
	if len(c.extra) > 0 && !(c.kind == "services" && c.verb == "enable") {
		return fmt.Errorf("unexpected arguments %q (a flag value given without =?)", c.extra)
	}
	switch c.kind + " " + c.verb {
	case "auth print-access-token":
		fmt.Fprintln(f.stdout, fakeToken)
		return nil
	case "projects describe":
		n, err := os.ReadFile(filepath.Join(f.state, "project-number"))
		if err != nil {
			return notFound("project " + c.name)
		}
		return f.print(c, resource{"projectNumber": strings.TrimSpace(string(n))})
	case "services list":
		if c.flags["format"] != "value(config.name)" || !c.bools["enabled"] {
			return fmt.Errorf("services list: unexpected flags %v %v", c.flags, c.bools)
		}
		names, err := f.list("services")
		if err != nil {
			return err
		}
		fmt.Fprint(f.stdout, joinLines(names))
		return nil
	case "services enable":
		for _, s := range append([]string{c.name}, c.extra...) {
			if err := f.save("services", s, resource{}); err != nil {
				return err
			}
		}
		return nil
	case "secrets versions list":
		// Every version the fake holds is enabled.
		if c.flags["filter"] != "state=ENABLED" {
			return fmt.Errorf("versions list: deploy.sh must ask for enabled versions, not %q", c.flags["filter"])
		}
		n, err := f.versions(c.name)
		if err != nil {
			return err
		}
		if n > 0 {
			fmt.Fprintf(f.stdout, "projects/%s/secrets/%s/versions/%d\n", c.flags["project"], c.name, n)
		}
		return nil
	case "secrets versions add":
		n, err := f.versions(c.name)
		if err != nil {
			return err
		}
		payload, err := os.ReadFile(c.flags["data-file"])
		if err != nil {
			return fmt.Errorf("versions add: --data-file: %w", err)
		}
		return f.addVersion(c.name, n+1, payload)
	case "secrets versions access":
		if c.name != "latest" {
			return fmt.Errorf("versions access %s: deploy.sh reads latest", c.name)
		}
		n, err := f.versions(c.flags["secret"])
		if err != nil {
			return err
		}
		if n == 0 {
			return notFound("secret " + c.flags["secret"] + " has no versions")
		}
		b, err := os.ReadFile(filepath.Join(f.state, "payloads", fmt.Sprintf("%s-%d", c.flags["secret"], n)))
		if err != nil {
			return err
		}
		_, err = f.stdout.Write(b)
		return err
	case "beta monitoring policies list", "monitoring policies list":
		return f.listPolicies(c)
	case "beta monitoring policies create", "beta monitoring policies update",
		"monitoring policies create", "monitoring policies update":
		return f.writePolicy(c)
	case "beta services identity create":
		return f.createIdentity(c)
	case "logging metrics create":
		// Monitoring learns of a new metric minutes later (writePolicy).
		if err := f.create(c); err != nil {
			return err
		}
		r, _, err := f.load(c.kind, c.name)
		if err != nil {
			return err
		}
		r["created_unix_nano"] = strconv.FormatInt(time.Now().UnixNano(), 10)
		return f.save(c.kind, c.name, r)
	case "functions deploy":
		return f.deployFunction(c)
	}
	switch c.verb {
	case "describe":
		r, ok, err := f.load(c.kind, c.name)
		if err != nil {
			return err
		}
		if !ok {
			return notFound(c.kind + " " + c.name)
		}
		return f.print(c, r)
	case "create":
		return f.create(c)
	case "update":
		return f.update(c)
	case "get-iam-policy":
		return f.getIAM(c)
	case "add-iam-policy-binding":
		return f.addIAM(c)
	}
	return fmt.Errorf("the fake does not know %q", args)
}

func joinLines(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

var valueFormat = regexp.MustCompile(`^value\(([^)]*)\)$`)

// print answers --format=value(a,b): the fields tab-separated.
func (f *fake) print(c gcloudCmd, r resource) error {
	m := valueFormat.FindStringSubmatch(c.flags["format"])
	if m == nil {
		return fmt.Errorf("%s %s: unsupported --format %q", c.kind, c.verb, c.flags["format"])
	}
	var vals []string
	for _, k := range strings.Split(m[1], ",") {
		vals = append(vals, r[k])
	}
	fmt.Fprintln(f.stdout, strings.Join(vals, "\t"))
	return nil
}

// fields turns a create/update command's flags into resource fields.
func fields(c gcloudCmd, r resource) error {
	for k, v := range c.flags {
		switch k {
		case "project", "format":
		case "labels", "update-labels":
			for _, kv := range strings.Split(v, ",") {
				lk, lv, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--%s: %q is not key=value", k, kv)
				}
				if !regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`).MatchString(lk) || !regexp.MustCompile(`^[a-z0-9_-]{0,63}$`).MatchString(lv) {
					return fmt.Errorf("--%s: %q is not a valid label", k, kv)
				}
				r["labels."+lk] = lv
			}
		case "description":
			r["description"] = v
			r["flag.description"] = v
		case "config-from-file":
			b, err := os.ReadFile(v)
			if err != nil {
				return err
			}
			var cfg map[string]any
			if err := json.Unmarshal(b, &cfg); err != nil {
				return fmt.Errorf("--config-from-file is not JSON: %w", err)
			}
			d, _ := cfg["description"].(string)
			r["description"] = d
			r["config"] = string(b)
		default:
			r["flag."+k] = v
		}
	}
	for k := range c.bools {
		if k != "quiet" {
			r["flag."+k] = "true"
		}
	}
	return nil
}

func (f *fake) create(c gcloudCmd) error {
	if _, ok, err := f.load(c.kind, c.name); err != nil || ok {
		if err != nil {
			return err
		}
		return exitError{1, "ERROR: (gcloud) ALREADY_EXISTS: " + c.kind + " " + c.name}
	}
	if err := f.requireRefs(c); err != nil {
		return err
	}
	r := resource{}
	if err := fields(c, r); err != nil {
		return err
	}
	return f.save(c.kind, f.canonical(c), r)
}

func (f *fake) update(c gcloudCmd) error {
	r, ok, err := f.load(c.kind, c.name)
	if err != nil {
		return err
	}
	if !ok {
		return notFound(c.kind + " " + c.name)
	}
	if err := f.requireRefs(c); err != nil {
		return err
	}
	if err := fields(c, r); err != nil {
		return err
	}
	return f.save(c.kind, c.name, r)
}

// canonical is the name a created resource is stored under: service
// accounts by email, the rest by name.
func (f *fake) canonical(c gcloudCmd) string {
	if c.kind == "iam service-accounts" {
		return c.name + "@" + c.flags["project"] + ".iam.gserviceaccount.com"
	}
	return c.name
}

// requireRefs fails like the real API when a command names a service
// account, topic or secret that does not exist yet.
func (f *fake) requireRefs(c gcloudCmd) error {
	for _, k := range []string{"service-account", "push-auth-service-account", "oidc-service-account-email"} {
		if v := c.flags[k]; v != "" {
			if err := f.requireSA(v); err != nil {
				return err
			}
		}
	}
	if v := c.flags["build-service-account"]; v != "" {
		if err := f.requireSA(v[strings.LastIndex(v, "/")+1:]); err != nil {
			return err
		}
	}
	for _, k := range []string{"topic", "dead-letter-topic"} {
		if v := c.flags[k]; v != "" {
			if _, ok, _ := f.load("pubsub topics", v[strings.LastIndex(v, "/")+1:]); !ok {
				return notFound("topic " + v)
			}
		}
	}
	return nil
}

func (f *fake) requireSA(email string) error {
	if strings.HasSuffix(email, "@gcp-sa-pubsub.iam.gserviceaccount.com") {
		// Service agents are created lazily: some when their API is
		// enabled, others when the service first needs them or when asked
		// to (https://cloud.google.com/iam/docs/service-agents). The fake
		// takes the strict case for Pub/Sub's: it exists only once `gcloud
		// beta services identity create --service=pubsub.googleapis.com`
		// made it.
		if _, ok, _ := f.load("service identities", "pubsub.googleapis.com"); !ok {
			return exitError{1, "ERROR: (gcloud) INVALID_ARGUMENT: Service account " + email + " does not exist."}
		}
		return nil
	}
	if strings.Contains(email, "@gcp-sa-") {
		return nil // other service agents: taken to exist once their API is enabled
	}
	if _, ok, _ := f.load("iam service-accounts", email); !ok {
		return exitError{1, "ERROR: (gcloud) INVALID_ARGUMENT: service account " + email + " does not exist"}
	}
	return nil
}

// createIdentity is `gcloud beta services identity create --service=S`
// (https://cloud.google.com/sdk/gcloud/reference/beta/services/identity/create):
// it creates the service agent of S in the project, or returns the existing
// one (the Terraform/Pulumi service-identity resource calls it on every
// apply). The fake counts real creations in "creations".
func (f *fake) createIdentity(c gcloudCmd) error {
	svc := c.flags["service"]
	if svc != "pubsub.googleapis.com" {
		return fmt.Errorf("services identity create: the fake knows only pubsub.googleapis.com, not %q", svc)
	}
	if _, ok, _ := f.load("services", svc); !ok {
		return exitError{1, "ERROR: (gcloud.beta.services.identity.create) FAILED_PRECONDITION: " + svc + " is not enabled"}
	}
	n, err := os.ReadFile(filepath.Join(f.state, "project-number"))
	if err != nil {
		return err
	}
	email := "service-" + strings.TrimSpace(string(n)) + "@gcp-sa-pubsub.iam.gserviceaccount.com"
	r, ok, err := f.load("service identities", svc)
	if err != nil {
		return err
	}
	if !ok {
		r = resource{"email": email}
		r["creations"] = "1"
		if err := f.save("service identities", svc, r); err != nil {
			return err
		}
	}
	if c.flags["format"] != "" {
		return f.print(c, r)
	}
	fmt.Fprintln(f.stdout, "Service identity created: "+email)
	return nil
}

func (f *fake) deployFunction(c gcloudCmd) error {
	if err := f.requireRefs(c); err != nil {
		return err
	}
	r, _, err := f.load("functions", c.name)
	if err != nil {
		return err
	}
	if r == nil {
		r = resource{}
	}
	if err := fields(c, r); err != nil {
		return err
	}
	// The source and environment files are gone after deploy.sh exits: keep
	// what the tests look at.
	src := c.flags["source"]
	shim, err := os.ReadFile(filepath.Join(src, "function.go"))
	if err != nil {
		return fmt.Errorf("functions deploy: --source has no function.go: %w", err)
	}
	r["source.function.go"] = string(shim)
	if gomod, err := os.ReadFile(filepath.Join(src, "go.mod")); err == nil {
		r["source.go.mod"] = string(gomod)
	}
	env, err := os.ReadFile(c.flags["env-vars-file"])
	if err != nil {
		return fmt.Errorf("functions deploy: --env-vars-file: %w", err)
	}
	r["env"] = string(env)
	r["deploys"] = strconv.Itoa(atoi(r["deploys"]) + 1)
	return f.save("functions", c.name, r)
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// versions counts the secret's versions; the secret must exist.
func (f *fake) versions(secret string) (int, error) {
	r, ok, err := f.load("secrets", secret)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, notFound("secret " + secret)
	}
	return atoi(r["versions"]), nil
}

func (f *fake) addVersion(secret string, n int, payload []byte) error {
	dir := filepath.Join(f.state, "payloads")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%d", secret, n)), payload, 0o600); err != nil {
		return err
	}
	r, _, err := f.load("secrets", secret)
	if err != nil {
		return err
	}
	r["versions"] = strconv.Itoa(n)
	return f.save("secrets", secret, r)
}

// ---------------------------------------------------------------------------
// IAM: FAKE_STATE/iam/<kind>/<name>, one "role member" line per binding.

// iamTarget maps a command to the resource whose policy it addresses and
// checks that the resource exists.
func (f *fake) iamTarget(c gcloudCmd) (string, error) {
	kind := c.kind
	switch c.kind {
	case "projects":
		return "projects/" + c.name, nil
	case "run services":
		// A gen2 function's Cloud Run service has the function's name.
		kind = "functions"
		if c.flags["region"] == "" {
			return "", errors.New("run services: --region is required")
		}
	}
	if _, ok, err := f.load(kind, c.name); err != nil || !ok {
		if err != nil {
			return "", err
		}
		return "", notFound(c.kind + " " + c.name)
	}
	return c.kind + "/" + c.name, nil
}

func (f *fake) iamPath(target string) string {
	return filepath.Join(f.state, "iam", url.PathEscape(target))
}

func (f *fake) getIAM(c gcloudCmd) error {
	target, err := f.iamTarget(c)
	if err != nil {
		return err
	}
	role, ok := strings.CutPrefix(c.flags["filter"], "bindings.role=")
	if !ok || c.flags["flatten"] != "bindings[].members" || c.flags["format"] != "value(bindings.members)" {
		return fmt.Errorf("get-iam-policy: unsupported flags %v", c.flags)
	}
	b, err := os.ReadFile(f.iamPath(target))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var members []string
	for _, line := range strings.Split(string(b), "\n") {
		if r, m, ok := strings.Cut(line, " "); ok && r == role {
			members = append(members, m)
		}
	}
	fmt.Fprint(f.stdout, joinLines(members))
	return nil
}

func (f *fake) addIAM(c gcloudCmd) error {
	target, err := f.iamTarget(c)
	if err != nil {
		return err
	}
	member, role := c.flags["member"], c.flags["role"]
	if !strings.HasPrefix(member, "serviceAccount:") || !strings.HasPrefix(role, "roles/") {
		return fmt.Errorf("add-iam-policy-binding: member %q role %q", member, role)
	}
	if err := f.requireSA(strings.TrimPrefix(member, "serviceAccount:")); err != nil {
		return err
	}
	if c.kind == "projects" && c.flags["condition"] != "None" {
		return errors.New("project bindings need --condition=None in quiet mode")
	}
	if err := os.MkdirAll(filepath.Join(f.state, "iam"), 0o700); err != nil {
		return err
	}
	fh, err := os.OpenFile(f.iamPath(target), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer fh.Close()
	_, err = fmt.Fprintf(fh, "%s %s\n", role, member)
	return err
}

// ---------------------------------------------------------------------------
// Alert policies: stored by display name.

var displayNameFilter = regexp.MustCompile(`^displayName="([^"]*)"$`)

func (f *fake) listPolicies(c gcloudCmd) error {
	m := displayNameFilter.FindStringSubmatch(c.flags["filter"])
	if m == nil {
		return fmt.Errorf("policies list: unsupported --filter %q", c.flags["filter"])
	}
	r, ok, err := f.load("policies", m[1])
	if err != nil || !ok {
		return err
	}
	return f.print(c, r)
}

func (f *fake) writePolicy(c gcloudCmd) error {
	b, err := os.ReadFile(c.flags["policy-from-file"])
	if err != nil {
		return err
	}
	var p struct {
		DisplayName string            `json:"displayName"`
		UserLabels  map[string]string `json:"userLabels"`
		Conditions  []struct {
			Threshold struct {
				Filter string `json:"filter"`
			} `json:"conditionThreshold"`
		} `json:"conditions"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("--policy-from-file is not JSON: %w", err)
	}
	for _, cond := range p.Conditions {
		if err := f.metricVisible(c, cond.Threshold.Filter); err != nil {
			return err
		}
	}
	r, exists, err := f.load("policies", p.DisplayName)
	if err != nil {
		return err
	}
	switch {
	case c.verb == "create" && exists:
		return errors.New("policies create: a policy with this display name exists (the real API would make a duplicate)")
	case c.verb == "update" && (!exists || r["name"] != c.name):
		return notFound("policy " + c.name)
	case c.verb == "create":
		names, _ := f.list("policies")
		r = resource{"name": fmt.Sprintf("projects/%s/alertPolicies/%d", c.flags["project"], 1000+len(names))}
	}
	for k, v := range p.UserLabels {
		r["userLabels."+k] = v
	}
	r["policy"] = string(b)
	return f.save("policies", p.DisplayName, r)
}

var userMetric = regexp.MustCompile(`metric\.type="logging\.googleapis\.com/user/([^"]+)"`)

// metricVisible fails like Cloud Monitoring when a policy's filter names a
// log-based metric it does not know yet: one that does not exist, or was
// created less than FAKE_METRIC_DELAY (a Go duration; default 0) ago. The
// message is the API's, as reported in
// https://github.com/hashicorp/terraform-provider-google/issues/11102 and
// https://github.com/GoogleCloudPlatform/cloud-foundation-fabric/pull/3739.
// Every refusal is counted in FAKE_STATE/metric-404s.
func (f *fake) metricVisible(c gcloudCmd, filter string) error {
	m := userMetric.FindStringSubmatch(filter)
	if m == nil {
		return nil
	}
	delay, err := time.ParseDuration(cmp.Or(os.Getenv("FAKE_METRIC_DELAY"), "0s"))
	if err != nil {
		return fmt.Errorf("FAKE_METRIC_DELAY: %w", err)
	}
	r, ok, err := f.load("logging metrics", m[1])
	if err != nil {
		return err
	}
	if ok {
		created, err := strconv.ParseInt(r["created_unix_nano"], 10, 64)
		if err == nil && time.Since(time.Unix(0, created)) >= delay {
			return nil
		}
	}
	fh, err := os.OpenFile(filepath.Join(f.state, "metric-404s"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer fh.Close()
	if _, err := fmt.Fprintln(fh, m[1]); err != nil {
		return err
	}
	return exitError{1, fmt.Sprintf("ERROR: (gcloud.%s.%s) NOT_FOUND: Cannot find metric(s) that match type = \"logging.googleapis.com/user/%s\". "+
		"If a metric was created recently, it could take up to 10 minutes to become available. Please try again soon.",
		strings.ReplaceAll(c.kind, " ", "."), c.verb, m[1])}
}

// ---------------------------------------------------------------------------
// curl: the Apigee management API.

func (f *fake) curl(args []string) error {
	method, target, out, writeOut := "GET", "", "", ""
	var headers []string
	var form, data string
	hasBody, fail := false, false
	for i := 0; i < len(args); i++ {
		a := args[i]
		next := func() string {
			i++
			if i >= len(args) {
				return ""
			}
			return args[i]
		}
		switch a {
		case "-sS", "-s", "-S":
		case "--fail-with-body", "--fail", "-f":
			fail = true
		case "-X":
			method = next()
		case "-H":
			h := next()
			if file, ok := strings.CutPrefix(h, "@"); ok {
				b, err := os.ReadFile(file)
				if err != nil {
					return fmt.Errorf("curl -H @%s: %w", file, err)
				}
				headers = append(headers, strings.Split(strings.TrimSpace(string(b)), "\n")...)
			} else {
				headers = append(headers, h)
			}
		case "-F":
			form, hasBody = next(), true
		case "--data-binary", "-d", "--data", "--data-raw":
			// curl sends Content-Length for these, also for an empty value.
			data, hasBody = next(), true
		case "-o":
			out = next()
		case "-w":
			writeOut = next()
		default:
			if strings.HasPrefix(a, "-") {
				return fmt.Errorf("curl: the fake does not know %s", a)
			}
			target = a
		}
	}
	if !slices.Contains(headers, "Authorization: Bearer "+fakeToken) {
		return f.curlAnswer(401, `{"error":{"code":401}}`, out, writeOut, fail)
	}
	if (method == "POST" || method == "PUT") && !hasBody && !slices.ContainsFunc(headers, func(h string) bool {
		return strings.HasPrefix(strings.ToLower(h), "content-length:")
	}) {
		// Over HTTP/1.1 curl sends no Content-Length for a POST without
		// data, and Google's front end refuses such a request before the
		// API sees it (googleapis/google-api-dotnet-client#84,
		// googleapis/storage-testbench#729).
		return f.curlAnswer(411, lengthRequired, out, writeOut, fail)
	}
	u, err := url.Parse(target)
	if err != nil {
		return err
	}
	code, body, err := f.apigee(method, u, form, data)
	if err != nil {
		return err
	}
	return f.curlAnswer(code, body, out, writeOut, fail)
}

// lengthRequired is the body of Google's front-end 411 page.
const lengthRequired = `<!DOCTYPE html><title>Error 411 (Length Required)!!1</title>` +
	`<p><b>411.</b> <ins>That’s an error.</ins><p>POST requests require a <code>Content-length</code> header. <ins>That’s all we know.</ins>`

func (f *fake) curlAnswer(code int, body, out, writeOut string, fail bool) error {
	if out != "" {
		if err := os.WriteFile(out, []byte(body), 0o600); err != nil {
			return err
		}
	} else {
		fmt.Fprint(f.stdout, body)
	}
	if writeOut != "" {
		fmt.Fprint(f.stdout, strings.ReplaceAll(writeOut, "%{http_code}", strconv.Itoa(code)))
	}
	if fail && code >= 400 {
		return exitError{22, fmt.Sprintf("curl: (22) The requested URL returned error: %d", code)}
	}
	return nil
}

var (
	importPath  = regexp.MustCompile(`^/v1/organizations/([^/]+)/sharedflows$`)
	deployPath  = regexp.MustCompile(`^/v1/organizations/([^/]+)/environments/([^/]+)/sharedflows/([^/]+)/revisions/([0-9]+)/deployments$`)
	deployments = regexp.MustCompile(`^/v1/organizations/([^/]+)/environments/([^/]+)/sharedflows/([^/]+)/deployments$`)
	flowHook    = regexp.MustCompile(`^/v1/organizations/([^/]+)/environments/([^/]+)/flowhooks/(PostProxyFlowHook|PostTargetFlowHook)$`)
)

// apigee answers the calls of deploy/gcp/deploy.sh and deploy/apigee/deploy.sh
// (Apigee API v1, https://cloud.google.com/apigee/docs/reference/apis/apigee/rest);
// the state is one resource "apigee/<org>" with keys revisions.SF,
// bundle.SF.REV, deployed.ENV.SF, sa.ENV.SF and hook.ENV.POINT.
func (f *fake) apigee(method string, u *url.URL, form, data string) (int, string, error) {
	p := u.Path
	org := strings.Split(strings.TrimPrefix(p, "/v1/organizations/"), "/")[0]
	st, _, err := f.load("apigee", org)
	if err != nil {
		return 0, "", err
	}
	if st == nil {
		st = resource{}
	}
	save := func() error { return f.save("apigee", org, st) }
	switch {
	case method == "POST" && importPath.MatchString(p):
		// organizations.sharedflows.create, action=import.
		name := u.Query().Get("name")
		if u.Query().Get("action") != "import" || name == "" || !strings.HasPrefix(form, "file=@") {
			return 400, `{"error":"bad import"}`, nil
		}
		zip, err := os.ReadFile(strings.TrimPrefix(form, "file=@"))
		if err != nil {
			return 0, "", err
		}
		rev := atoi(st["revisions."+name]) + 1
		st["revisions."+name] = strconv.Itoa(rev)
		st["bundle."+name+"."+strconv.Itoa(rev)] = digest(string(zip))
		return 200, fmt.Sprintf(`{"name":%q,"revision":"%d"}`, name, rev), save()
	case method == "POST" && deployPath.MatchString(p):
		// organizations.environments.sharedflows.revisions.deployments.deploy
		// (the request body must be empty: sent as Content-Length: 0).
		m := deployPath.FindStringSubmatch(p)
		env, sf, rev := m[2], m[3], m[4]
		if atoi(rev) > atoi(st["revisions."+sf]) {
			return 404, `{"error":"no such revision"}`, nil
		}
		sa := u.Query().Get("serviceAccount")
		if sa == "" || u.Query().Get("override") != "true" {
			return 400, `{"error":"deploy needs serviceAccount and override"}`, nil
		}
		st["deployed."+env+"."+sf] = rev
		st["sa."+env+"."+sf] = sa
		return 200, `{}`, save()
	case method == "GET" && deployPath.MatchString(p):
		// revisions.getDeployments: a Deployment, serviceAccount included
		// (https://cloud.google.com/apigee/docs/reference/apis/apigee/rest/v1/organizations.environments.sharedflows.revisions/getDeployments).
		m := deployPath.FindStringSubmatch(p)
		env, sf, rev := m[2], m[3], m[4]
		if st["deployed."+env+"."+sf] != rev {
			return 404, `{"error":"not deployed"}`, nil
		}
		return 200, fmt.Sprintf(`{"environment": %q, "apiProxy": %q, "revision": %q, "state": "READY", "serviceAccount": "projects/-/serviceAccounts/%s"}`,
			env, sf, rev, st["sa."+env+"."+sf]), nil
	case method == "GET" && deployments.MatchString(p):
		// environments.sharedflows.deployments.list. Its documented fields
		// do not promise serviceAccount; the fake leaves it out, so only
		// getDeployments tells who the flow runs as.
		m := deployments.FindStringSubmatch(p)
		rev := st["deployed."+m[2]+"."+m[3]]
		if rev == "" {
			return 200, `{}`, nil
		}
		return 200, fmt.Sprintf(`{"deployments": [{"environment": %q, "apiProxy": %q, "revision": %q}]}`, m[2], m[3], rev), nil
	case method == "PUT" && flowHook.MatchString(p):
		// environments.flowhooks.attachSharedFlowToFlowHook: only a
		// deployed shared flow can be attached.
		m := flowHook.FindStringSubmatch(p)
		b, err := os.ReadFile(strings.TrimPrefix(data, "@"))
		if err != nil {
			return 0, "", err
		}
		var hook struct {
			SharedFlow      string `json:"sharedFlow"`
			ContinueOnError bool   `json:"continueOnError"`
		}
		if err := json.Unmarshal(b, &hook); err != nil || hook.SharedFlow == "" {
			return 400, `{"error":"bad flow hook"}`, nil
		}
		if st["deployed."+m[2]+"."+hook.SharedFlow] == "" {
			return 400, `{"error":"shared flow not deployed"}`, nil
		}
		st["hook."+m[2]+"."+m[3]] = hook.SharedFlow
		return 200, string(b), save()
	case method == "GET" && flowHook.MatchString(p):
		m := flowHook.FindStringSubmatch(p)
		if h := st["hook."+m[2]+"."+m[3]]; h != "" {
			return 200, fmt.Sprintf(`{"flowHookPoint": %q, "sharedFlow": %q, "continueOnError": true}`, m[3], h), nil
		}
		return 200, fmt.Sprintf(`{"flowHookPoint": %q}`, m[3]), nil
	}
	return 404, `{"error":"the fake does not know ` + method + " " + p + `"}`, nil
}

// ---------------------------------------------------------------------------
// dblogin: writes credentials with a random password, as the real one does,
// and remembers the password so the tests can look for leaks.

func (f *fake) dblogin(args []string) error {
	opts := map[string]string{}
	for i := 0; i+1 < len(args); i += 2 {
		if !strings.HasPrefix(args[i], "-") {
			return fmt.Errorf("dblogin: unexpected %q", args[i])
		}
		opts[strings.TrimPrefix(args[i], "-")] = args[i+1]
	}
	if opts["login"] == "" || opts["group"] == "" || opts["out"] == "" || os.Getenv("DATABASE_URL") == "" {
		return fmt.Errorf("dblogin: missing -login, -group, -out or DATABASE_URL: %q", args)
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	password := "pw-" + hex.EncodeToString(b)
	port, _ := strconv.Atoi(opts["port"])
	payload, err := json.Marshal(map[string]any{"username": opts["login"], "password": password,
		"host": opts["host"], "port": port, "database": opts["database"], "sslmode": opts["sslmode"]})
	if err != nil {
		return err
	}
	if err := os.WriteFile(opts["out"], payload, 0o600); err != nil {
		return err
	}
	fh, err := os.OpenFile(filepath.Join(f.state, "passwords"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer fh.Close()
	_, err = fmt.Fprintln(fh, password)
	return err
}
