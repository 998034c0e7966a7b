package apigee_test

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"apigee-timescale/deploy/local/standin/apigee"
	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/record"
)

// bundleDir is the publishing shared flow (PostProxyFlowHook),
// targetBundleDir the one that keeps the target's status
// (PostTargetFlowHook).
const (
	bundleDir       = "sharedflowbundle"
	targetBundleDir = "target/sharedflowbundle"
)

// bundles are both shared flows, with the name each descriptor must carry.
var bundles = []struct{ dir, name string }{
	{bundleDir, apigee.SharedFlowName},
	{targetBundleDir, apigee.TargetSharedFlowName},
}

func TestRender(t *testing.T) {
	vars := map[string]string{
		"a":                   "A",
		"empty":               "",
		"request.header.X-Id": `q"x`,
		"jwt.VJ-Verify.sub":   "s",
	}
	tests := []struct {
		name, tmpl, want string
	}{
		{"literal", "plain text", "plain text"},
		{"variable", "<{a}>", "<A>"},
		{"unresolved is empty", "<{missing.var}>", "<>"},
		{"hyphenated name", "{request.header.X-Id}", `q"x`},
		{"json braces are literal", `{"k":"{a}","o":{"n":"{a}"}}`, `{"k":"A","o":{"n":"A"}}`},
		{"brace then space is literal", "{ a }", "{ a }"},
		{"stray close brace", "a}b", "a}b"},
		{"trailing open brace", "x{", "x{"},
		{"escapeJSON", `"{escapeJSON(request.header.X-Id)}"`, `"q\"x"`},
		{"escapeJSON unresolved", `"{escapeJSON(nope)}"`, `""`},
		{"firstnonnull first", "{firstnonnull(a,empty)}", "A"},
		{"firstnonnull skips empty and unresolved", "{firstnonnull(nope,empty,jwt.VJ-Verify.sub)}", "s"},
		{"firstnonnull literal", "{firstnonnull(nope,'dflt')}", "dflt"},
		{"firstnonnull all empty", "[{firstnonnull(nope,empty)}]", "[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := apigee.Render(tt.tmpl, vars)
			if err != nil {
				t.Fatalf("Render(%q): %v", tt.tmpl, err)
			}
			if got != tt.want {
				t.Errorf("Render(%q) = %q, want %q", tt.tmpl, got, tt.want)
			}
		})
	}
}

func TestRenderRejectsWhatItCannotEmulate(t *testing.T) {
	for _, tmpl := range []string{
		"{a",                              // unterminated
		"{unknownFn(a)}",                  // unknown function
		"{escapeJSON(firstnonnull(a,b))}", // nested calls
		"{escapeJSON(a,b)}",               // arity
		"{escapeJSON(a)",                  // unterminated call
		"{a:default}",                     // default syntax is not used by the bundle
		"{firstnonnull()}",                // arity
		"{toUpperCase(a)}",                // real Apigee function, not emulated
		"{escapeJSON(a)x}",                // junk after call
		"{escapeJSON('a'b)}",              // malformed literal
	} {
		if got, err := apigee.Render(tmpl, map[string]string{"a": "A", "b": "B"}); err == nil {
			t.Errorf("Render(%q) = %q, want an error", tmpl, got)
		}
	}
}

// FuzzRender checks that Render never panics and that a template without
// references comes back unchanged.
func FuzzRender(f *testing.F) {
	for _, s := range []string{"", "{", "}{", "{a}", "{a(", "{a()}", "{escapeJSON(a)}", "{firstnonnull(a,'x',b)}", `{"k":"{a}"}`, "{a:b}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tmpl string) {
		out, err := apigee.Render(tmpl, map[string]string{"a": "A"})
		if err == nil && !regexp.MustCompile(`\{[A-Za-z_]`).MatchString(tmpl) && out != tmpl {
			t.Errorf("Render(%q) = %q, want it unchanged", tmpl, out)
		}
	})
}

// weirdStrings are values a client or an identity provider can put into
// flow variables; each must survive escapeJSON → JSON decode unchanged.
var weirdStrings = []string{
	"",
	`plain`,
	`quote " inside`,
	`back\slash and \" both`,
	`trailing backslash\`,
	"new\nline, cr\r, tab\t, bell\x07, esc\x1b, unit sep\x1f, del\x7f",
	"form\ffeed and back\bspace",
	"slash / and </script>",
	"unicode: é ü ß 日本語 Ελληνικά",
	"astral: 😀 𝄞 \U0001F9EA",
	"line sep \u2028 para sep \u2029 bom \ufeff",
	"{not.a.var} {escapeJSON(x)} }{",
}

func TestEscapeJSONRoundTrips(t *testing.T) {
	// NUL is escaped correctly too; it is kept out of weirdStrings only
	// because ingest refuses it (PostgreSQL text cannot hold it).
	for _, s := range append(weirdStrings, "nul\x00inside") {
		assertEscapeRoundTrip(t, s)
	}
}

func FuzzEscapeJSON(f *testing.F) {
	for _, s := range weirdStrings {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			// Flow variables are Java strings; invalid UTF-8 cannot occur.
			return
		}
		assertEscapeRoundTrip(t, s)
	})
}

func assertEscapeRoundTrip(t *testing.T, s string) {
	t.Helper()
	esc := apigee.EscapeJSON(s)
	for i := 0; i < len(esc); i++ {
		if esc[i] < 0x20 || esc[i] >= 0x80 {
			t.Fatalf("EscapeJSON(%q) = %q: raw byte %#x left in output", s, esc, esc[i])
		}
	}
	var got string
	if err := json.Unmarshal([]byte(`"`+esc+`"`), &got); err != nil {
		t.Fatalf("EscapeJSON(%q) = %q: not a JSON string body: %v", s, esc, err)
	}
	if got != s {
		t.Fatalf("EscapeJSON(%q) decodes to %q", s, got)
	}
}

func TestEscapeJSONForm(t *testing.T) {
	// The exact escapes of Apache Commons Text's escapeJson.
	tests := map[string]string{
		`a"b\c/d`:    `a\"b\\c\/d`,
		"\n\r\t\b\f": `\n\r\t\b\f`,
		"\x01\x1f":   `\u0001\u001F`,
		"é":          `\u00E9`,
		"😀":          `\uD83D\uDE00`,
		"~\x7f":      "~\x7f",
	}
	for in, want := range tests {
		if got := apigee.EscapeJSON(in); got != want {
			t.Errorf("EscapeJSON(%q) = %q, want %q", in, got, want)
		}
	}
}

// policyHeader reads the attributes every Apigee policy shares.
type policyHeader struct {
	XMLName         xml.Name
	Name            string `xml:"name,attr"`
	ContinueOnError string `xml:"continueOnError,attr"`
	Enabled         string `xml:"enabled,attr"`
}

func TestEveryPolicyContinuesOnError(t *testing.T) {
	var files []string
	for _, b := range bundles {
		fs, err := filepath.Glob(filepath.Join(b.dir, "policies", "*.xml"))
		if err != nil || len(fs) == 0 {
			t.Fatalf("%s: no policies found: %v", b.dir, err)
		}
		files = append(files, fs...)
	}
	for _, f := range files {
		var h policyHeader
		readXML(t, f, &h)
		if want := strings.TrimSuffix(filepath.Base(f), ".xml"); h.Name != want {
			t.Errorf("%s: name=%q, want %q (Apigee requires file name = policy name)", f, h.Name, want)
		}
		if h.ContinueOnError != "true" {
			t.Errorf("%s: continueOnError=%q; analytics must never fail an API call", f, h.ContinueOnError)
		}
		if h.Enabled != "true" {
			t.Errorf("%s: enabled=%q", f, h.Enabled)
		}
	}
}

type bundleDescriptor struct {
	XMLName     xml.Name `xml:"SharedFlowBundle"`
	Name        string   `xml:"name,attr"`
	Policies    []string `xml:"Policies>Policy"`
	Resources   []string `xml:"Resources>Resource"`
	SharedFlows []string `xml:"SharedFlows>SharedFlow"`
}

type sharedFlow struct {
	XMLName xml.Name `xml:"SharedFlow"`
	Name    string   `xml:"name,attr"`
	Steps   []struct {
		Name      string `xml:"Name"`
		Condition string `xml:"Condition"`
	} `xml:"Step"`
}

func TestBundleLayout(t *testing.T) {
	var d bundleDescriptor
	readXML(t, filepath.Join(bundleDir, apigee.SharedFlowName+".xml"), &d)
	if d.Name != apigee.SharedFlowName {
		t.Errorf("descriptor name = %q, want %q", d.Name, apigee.SharedFlowName)
	}

	files, _ := filepath.Glob(filepath.Join(bundleDir, "policies", "*.xml"))
	var onDisk []string
	for _, f := range files {
		onDisk = append(onDisk, strings.TrimSuffix(filepath.Base(f), ".xml"))
	}
	listed := slices.Clone(d.Policies)
	slices.Sort(listed)
	slices.Sort(onDisk)
	if !slices.Equal(listed, onDisk) {
		t.Errorf("descriptor lists policies %v, policies/ holds %v", listed, onDisk)
	}
	for _, r := range d.Resources {
		name, ok := strings.CutPrefix(r, "jsc://")
		if !ok {
			t.Errorf("resource %q: only jsc:// resources expected", r)
			continue
		}
		if _, err := os.Stat(filepath.Join(bundleDir, "resources", "jsc", name)); err != nil {
			t.Errorf("resource %q: %v", r, err)
		}
	}
	if !slices.Equal(d.SharedFlows, []string{"default"}) {
		t.Errorf("shared flows = %v, want [default]", d.SharedFlows)
	}

	var sf sharedFlow
	readXML(t, filepath.Join(bundleDir, "sharedflows", "default.xml"), &sf)
	var steps []string
	for _, s := range sf.Steps {
		steps = append(steps, s.Name)
		if !slices.Contains(onDisk, s.Name) {
			t.Errorf("step %s: no such policy", s.Name)
		}
		// The run-once guard: a second execution (flow hook plus a
		// FlowCallout from a fault rule) must not publish twice.
		if !strings.Contains(s.Condition, `not (timescale.published = "true")`) {
			t.Errorf("step %s: condition %q lacks the run-once guard", s.Name, s.Condition)
		}
	}
	want := []string{"JS-PrepareCallRecord", apigee.BuildPolicy, apigee.PublishPolicy, "AM-MarkPublished"}
	if !slices.Equal(steps, want) {
		t.Errorf("steps = %v, want %v", steps, want)
	}
}

// TestTargetBundleLayout checks the second shared flow: one step that keeps
// the target's response.status.code, run at the PostTargetFlowHook.
func TestTargetBundleLayout(t *testing.T) {
	var d bundleDescriptor
	readXML(t, filepath.Join(targetBundleDir, apigee.TargetSharedFlowName+".xml"), &d)
	if d.Name != apigee.TargetSharedFlowName || !slices.Equal(d.Policies, []string{apigee.CapturePolicy}) ||
		!slices.Equal(d.SharedFlows, []string{"default"}) || len(d.Resources) != 0 {
		t.Errorf("descriptor %+v, want %s with the one policy %s", d, apigee.TargetSharedFlowName, apigee.CapturePolicy)
	}
	var sf sharedFlow
	readXML(t, filepath.Join(targetBundleDir, "sharedflows", "default.xml"), &sf)
	if len(sf.Steps) != 1 || sf.Steps[0].Name != apigee.CapturePolicy {
		t.Errorf("steps %+v, want the one step %s", sf.Steps, apigee.CapturePolicy)
	}
	got, err := apigee.RunTargetFlow(targetBundleDir, map[string]string{"response.status.code": "503"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{apigee.VarTargetResponseCode: "503"}; !maps.Equal(got, want) {
		t.Errorf("the target flow sets %v, want %v", got, want)
	}
}

// TestBundleReadsOnlyDocumentedVariables checks every flow variable the
// shared flows read against Apigee X's documentation (the pages are listed
// in the stand-in's variables.go): a variable Apigee does not document is
// never set, renders as "", and its record field would always be empty.
func TestBundleReadsOnlyDocumentedVariables(t *testing.T) {
	for _, b := range bundles {
		names, err := apigee.Reads(b.dir)
		if err != nil {
			t.Fatalf("%s: %v", b.dir, err)
		}
		if len(names) == 0 {
			t.Fatalf("%s reads no variables: the check would be empty", b.dir)
		}
		for _, n := range names {
			if strings.HasPrefix(n, apigee.BundleNamespace) {
				continue
			}
			if _, ok := apigee.Documented(n); !ok {
				t.Errorf("%s reads %s, which Apigee X does not document as a flow variable", b.dir, n)
			}
		}
	}
}

func TestPublishPolicy(t *testing.T) {
	pm, err := apigee.LoadPublishMessage(bundleDir, apigee.PublishPolicy)
	if err != nil {
		t.Fatal(err)
	}
	if !pm.ContinueOnError || !pm.IgnoreUnresolvedVariables {
		t.Errorf("continueOnError=%v IgnoreUnresolvedVariables=%v, want both true", pm.ContinueOnError, pm.IgnoreUnresolvedVariables)
	}
	if pm.Source != "{"+apigee.RecordVariable+"}" {
		t.Errorf("Source = %q, want {%s}", pm.Source, apigee.RecordVariable)
	}
	if want := "projects/@GCP_PROJECT@/topics/@PUBSUB_TOPIC@"; pm.Topic != want {
		t.Errorf("Topic = %q, want %q (deploy.sh substitutes the placeholders)", pm.Topic, want)
	}
	attrs, err := pm.RenderAttributes(map[string]string{
		"organization.name": "acme", "environment.name": "prod", "apiproxy.name": "orders-v1",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"schema": "apigee.call.v1", "organization": "acme", "environment": "prod", "apiproxy": "orders-v1"}
	if !maps.Equal(attrs, want) {
		t.Errorf("attributes = %v, want %v", attrs, want)
	}
}

func TestBuildPolicyShape(t *testing.T) {
	am, err := apigee.LoadAssignMessage(bundleDir, apigee.BuildPolicy)
	if err != nil {
		t.Fatal(err)
	}
	if !am.ContinueOnError || !am.IgnoreUnresolvedVariables {
		t.Errorf("continueOnError=%v IgnoreUnresolvedVariables=%v, want both true", am.ContinueOnError, am.IgnoreUnresolvedVariables)
	}
	if n := len(am.AssignVariables); n == 0 || am.AssignVariables[n-1].Name != apigee.RecordVariable {
		t.Errorf("the record must be the last AssignVariable, so it sees every derived variable")
	}
	tmpl, err := apigee.LoadTemplate(bundleDir)
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(tmpl, "\r\n") {
		t.Errorf("record template spans lines; ingest would read it as newline-delimited records")
	}
	// Every reference must be a quoted escapeJSON call: a bare {var} could
	// break out of its string, an unquoted one would render `"x":,`.
	refs := regexp.MustCompile(`\{[A-Za-z_][^{}]*\}`).FindAllStringIndex(tmpl, -1)
	if len(refs) == 0 {
		t.Fatal("no references in the record template")
	}
	quotedEscape := regexp.MustCompile(`^\{escapeJSON\([A-Za-z_][A-Za-z0-9_.\-]*\)\}$`)
	for _, r := range refs {
		ref := tmpl[r[0]:r[1]]
		if !quotedEscape.MatchString(ref) {
			t.Errorf("reference %s is not {escapeJSON(variable)}", ref)
		}
		if r[0] == 0 || tmpl[r[0]-1] != '"' || r[1] >= len(tmpl) || tmpl[r[1]] != '"' {
			t.Errorf("reference %s is not the whole of a quoted JSON string", ref)
		}
	}
}

func TestFlowHookBody(t *testing.T) {
	for file, flow := range map[string]string{
		"flowhook.json":        apigee.SharedFlowName,
		"flowhook-target.json": apigee.TargetSharedFlowName,
	} {
		t.Run(file, func(t *testing.T) { checkFlowHookBody(t, file, flow) })
	}
}

func checkFlowHookBody(t *testing.T, file, flow string) {
	var body struct {
		SharedFlow      string `json:"sharedFlow"`
		ContinueOnError *bool  `json:"continueOnError"`
		Description     string `json:"description"`
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if body.SharedFlow != flow {
		t.Errorf("sharedFlow = %q, want %q", body.SharedFlow, flow)
	}
	if body.ContinueOnError == nil || !*body.ContinueOnError {
		t.Errorf("continueOnError must be explicitly true")
	}
}

func readXML(t testing.TB, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// nodeRunner evaluates the bundle's JavaScript with a stub of Apigee's
// context object (getVariable/setVariable) and prints what it set.
const nodeRunner = `
const fs = require("fs"), vm = require("vm");
const [script, casesJSON] = process.argv.slice(2);
const src = fs.readFileSync(script, "utf8"), out = {};
for (const [name, vars] of Object.entries(JSON.parse(casesJSON))) {
  const set = {};
  const context = {
    getVariable: (n) => (Object.prototype.hasOwnProperty.call(vars, n) ? vars[n] : null),
    setVariable: (n, v) => { if (typeof v !== "string") throw new Error(n + " set to a " + typeof v); set[n] = v; },
  };
  vm.runInNewContext(src, { context });
  out[name] = set;
}
process.stdout.write(JSON.stringify(out));
`

// TestScriptMatchesDeriveVars runs prepare-call-record.js under node and
// checks that DeriveVars, which the tests and the simulator use in its
// place, computes the same variables.
func TestScriptMatchesDeriveVars(t *testing.T) {
	node := testkit.Tool(t, "node", "nodejs")
	runner := filepath.Join(t.TempDir(), "runner.js")
	if err := os.WriteFile(runner, []byte(nodeRunner), 0o600); err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs(filepath.Join(bundleDir, "resources", "jsc", "prepare-call-record.js"))
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]map[string]string{
		"nothing": {},
		"all timestamps": {
			"client.received.start.timestamp": "1767225600123", "system.timestamp": "1767225600456",
			"target.sent.start.timestamp": "1767225600200", "target.received.end.timestamp": "1767225600400",
		},
		"no target":           {"client.received.start.timestamp": "1767225600123", "system.timestamp": "1767225600123"},
		"end before start":    {"client.received.start.timestamp": "1767225600123", "system.timestamp": "1767225600000"},
		"zero start":          {"client.received.start.timestamp": "0", "system.timestamp": "5"},
		"padded digits":       {"client.received.start.timestamp": " 100 ", "system.timestamp": "250\n"},
		"not digits":          {"client.received.start.timestamp": "1e3", "system.timestamp": "2000"},
		"negative":            {"client.received.start.timestamp": "-5", "system.timestamp": "2000"},
		"sixteen digits":      {"client.received.start.timestamp": "1000000000000000", "system.timestamp": "1000000000000001"},
		"fifteen digits":      {"client.received.start.timestamp": "100000000000000", "system.timestamp": "999999999999999"},
		"jwt":                 {"jwt.VJ-VerifyJWT.valid": "true", "access_token": "tok", "client_id": "c"},
		"jwt invalid":         {"jwt.VJ-VerifyJWT.valid": "false", "client_id": "c"},
		"oauth2":              {"access_token": "tok", "client_id": "c"},
		"apikey by policy":    {"verifyapikey.VA-VerifyAPIKey.client_id": "c"},
		"apikey by client_id": {"client_id": "c"},
		"override":            {"timescale.in.auth": "oauth2", "jwt.VJ-VerifyJWT.valid": "true"},
		"empty override":      {"timescale.in.auth": "", "client_id": "c"},
	}
	// X-Forwarded-For: the entry picked and validated alike. netip (in
	// DeriveVars) is the reference for what an address is.
	xff := map[string][2]string{ // header, index
		"xff first":              {"203.0.113.7, 10.0.0.1, 35.191.0.1", ""},
		"xff last":               {"203.0.113.7, 10.0.0.1, 35.191.0.1", "-1"},
		"xff second from right":  {"203.0.113.7,10.0.0.1,35.191.0.1", "-2"},
		"xff index past end":     {"203.0.113.7", "3"},
		"xff index before start": {"203.0.113.7", "-2"},
		"xff bad index":          {"203.0.113.7, 10.0.0.1", "one"},
		"xff tabs":               {"\t198.51.100.2\t,x", "0"},
		"xff unicode space":      {"\u00a0198.51.100.2", "0"},
		"xff port":               {"198.51.100.2:443", "0"},
		"xff leading zero":       {"198.051.100.2", "0"},
		"xff octet 256":          {"198.51.100.256", "0"},
		"xff three octets":       {"198.51.100", "0"},
		"xff ipv6":               {"2001:db8::1", "0"},
		"xff ipv6 upper":         {"2001:DB8:0:0:0:0:0:1", "0"},
		"xff ipv6 full":          {"1:2:3:4:5:6:7:8", "0"},
		"xff ipv6 nine":          {"1:2:3:4:5:6:7:8:9", "0"},
		"xff ipv6 two gaps":      {"1::2::3", "0"},
		"xff ipv6 trailing gap":  {"1:2:3:4:5:6:7::", "0"},
		"xff ipv6 gap and eight": {"1:2:3:4:5:6:7:8::", "0"},
		"xff ipv6 unspecified":   {"::", "0"},
		"xff ipv4 mapped":        {"::ffff:192.0.2.1", "0"},
		"xff ipv4 tail":          {"1:2:3:4:5:6:192.0.2.1", "0"},
		"xff ipv4 tail too long": {"1:2:3:4:5:6:7:192.0.2.1", "0"},
		"xff ipv4 tail first":    {"192.0.2.1::", "0"},
		"xff zone":               {"fe80::1%eth0", "0"},
		"xff brackets":           {"[2001:db8::1]", "0"},
		"xff group of five":      {"2001:db8::12345", "0"},
		"xff lone colon":         {":1", "0"},
		"xff obfuscated":         {"unknown, 203.0.113.7", "0"},
		"xff empty entry":        {" , 203.0.113.7", "0"},
		"xff sql":                {"1.2.3.4'; DROP TABLE x; --", "0"},
	}
	for name, c := range xff {
		tests[name] = map[string]string{apigee.VarForwardedFor: c[0], "timescale.in.xff_index": c[1]}
	}
	in, err := json.Marshal(tests)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(node, runner, script, string(in)).Output()
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	var results map[string]map[string]string
	if err := json.Unmarshal(out, &results); err != nil {
		t.Fatalf("node output %q: %v", out, err)
	}
	for name, vars := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := results[name]
			if !ok {
				t.Fatal("no result from node")
			}
			if want := apigee.DeriveVars(vars); !maps.Equal(got, want) {
				t.Errorf("script set %v, DeriveVars returns %v", got, want)
			}
		})
	}
}

// receivedAt is the call's client.received.start.timestamp in the fixtures:
// in the past, so record.DefaultLimits' clock accepts it.
var receivedAt = time.Date(2026, 1, 2, 3, 4, 5, 123_000_000, time.UTC)

func ms(t time.Time, offset time.Duration) string {
	return strconv.FormatInt(t.Add(offset).UnixMilli(), 10)
}

// requiredVars are the flow variables behind the record's required fields,
// keyed by the JSON field they feed.
func requiredVars() map[string][2]string {
	return map[string][2]string{
		"message_id":           {"messageid", "rrt-0d8e1f2a3b4c5d6e7-c-ea-31415-926535-1"},
		"received_at":          {"client.received.start.timestamp", ms(receivedAt, 0)},
		"organization":         {"organization.name", "acme-prod"},
		"environment":          {"environment.name", "prod"},
		"apiproxy":             {"apiproxy.name", "orders-v1"},
		"request_verb":         {"request.verb", "get"},
		"request_path":         {"request.path", "/orders/v1/items/123"},
		"response_status_code": {"response.status.code", "200"},
	}
}

func minimalVars() map[string]string {
	vars := map[string]string{}
	for _, kv := range requiredVars() {
		vars[kv[0]] = kv[1]
	}
	return vars
}

// completeVars is a JWT-authenticated call that reached its target, with
// every variable the bundle reads set, as Apigee would at PostProxyFlowHook.
func completeVars() map[string]string {
	vars := minimalVars()
	for k, v := range map[string]string{
		"system.timestamp":                        ms(receivedAt, 333*time.Millisecond),
		"target.sent.start.timestamp":             ms(receivedAt, 100*time.Millisecond),
		"target.received.end.timestamp":           ms(receivedAt, 300*time.Millisecond),
		"apiproxy.revision":                       "42",
		"proxy.basepath":                          "/orders/v1",
		"request.header.Content-Length":           "17",
		"response.header.Content-Length":          "512",
		"client.ip":                               "203.0.113.7",
		"request.header.User-Agent.values.string": "okhttp/4.12.0",
		"target.host":                             "orders.internal.example",
		"is.error":                                "false",
		"developer.app.name":                      "orders-web",
		"developer.email":                         "dev@example.com", // VerifyAccessToken sets it; see the api key case
		"apiproduct.name":                         "orders-gold",
		"client_id":                               "Kq3c9ZtYbXo1",
		"verifyapikey.VA-VerifyAPIKey.tenant":     "tenant-a",
		"jwt.VJ-VerifyJWT.valid":                  "true",
		"jwt.VJ-VerifyJWT.decoded.claim.sub":      "user-123",
		"jwt.VJ-VerifyJWT.decoded.claim.iss":      "https://idp.example/",
		"jwt.VJ-VerifyJWT.decoded.claim.email":    "alice@example.com",
		"jwt.VJ-VerifyJWT.decoded.claim.scope":    "orders.read orders.write",
	} {
		vars[k] = v
	}
	return vars
}

func with(base map[string]string, kv ...string) map[string]string {
	out := maps.Clone(base)
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func without(base map[string]string, keys ...string) map[string]string {
	out := maps.Clone(base)
	for _, k := range keys {
		delete(out, k)
	}
	return out
}

func ptr[T any](v T) *T { return &v }

func eq[T comparable](t *testing.T, field string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %#v, want %#v", field, got, want)
	}
}

func eqPtr[T comparable](t *testing.T, field string, got, want *T) {
	t.Helper()
	switch {
	case got == nil && want == nil:
	case got == nil || want == nil:
		t.Errorf("%s = %v, want %v", field, fmtPtr(got), fmtPtr(want))
	case *got != *want:
		t.Errorf("%s = %v, want %v", field, *got, *want)
	}
}

func fmtPtr[T any](p *T) string {
	if p == nil {
		return "absent"
	}
	return fmt.Sprint(*p)
}

func TestRenderedRecordsAreAccepted(t *testing.T) {
	schema := compileSchema(t)
	tests := []struct {
		name  string
		vars  map[string]string
		check func(t *testing.T, r record.Record)
	}{
		{"complete jwt call", completeVars(), func(t *testing.T, r record.Record) {
			eq(t, "MessageID", r.MessageID, "rrt-0d8e1f2a3b4c5d6e7-c-ea-31415-926535-1")
			eq(t, "ReceivedAt", r.ReceivedAt, receivedAt)
			eq(t, "Organization", r.Organization, "acme-prod")
			eq(t, "Environment", r.Environment, "prod")
			eq(t, "APIProxy", r.APIProxy, "orders-v1")
			eqPtr(t, "APIProxyRevision", r.APIProxyRevision, ptr[int32](42))
			eq(t, "ProxyBasepath", r.ProxyBasepath, "/orders/v1")
			eq(t, "RequestVerb", r.RequestVerb, "GET")
			eq(t, "RequestPath", r.RequestPath, "/orders/v1/items/123")
			eq(t, "ResponseStatusCode", r.ResponseStatusCode, 200)
			eqPtr(t, "TargetResponseCode", r.TargetResponseCode, ptr[int16](201))
			eqPtr(t, "TotalResponseTime", r.TotalResponseTime, ptr[int32](333))
			eqPtr(t, "TargetResponseTime", r.TargetResponseTime, ptr[int32](200))
			eqPtr(t, "RequestSize", r.RequestSize, ptr[int64](17))
			eqPtr(t, "ResponseSize", r.ResponseSize, ptr[int64](512))
			eq(t, "ClientIP", r.ClientIP, netip.MustParseAddr("203.0.113.7"))
			eq(t, "UserAgent", r.UserAgent, "okhttp/4.12.0")
			eq(t, "TargetHost", r.TargetHost, "orders.internal.example")
			eq(t, "FaultName", r.FaultName, "")
			eqPtr(t, "IsError", r.IsError, ptr(false))
			eq(t, "DeveloperApp", r.DeveloperApp, "orders-web")
			eq(t, "DeveloperEmail", r.DeveloperEmail, "dev@example.com")
			eq(t, "APIProduct", r.APIProduct, "orders-gold")
			eq(t, "ClientID", r.ClientID, "Kq3c9ZtYbXo1")
			eq(t, "Tenant", r.Tenant, "tenant-a")
			eq(t, "Identity.Subject", r.Identity.Subject, "user-123")
			eq(t, "Identity.Issuer", r.Identity.Issuer, "https://idp.example/")
			eq(t, "Identity.Email", r.Identity.Email, "alice@example.com")
			eq(t, "Identity.Auth", r.Identity.Auth, "jwt")
			if want := []string{"orders.read", "orders.write"}; !slices.Equal(r.Identity.Scopes, want) {
				t.Errorf("Identity.Scopes = %q, want %q", r.Identity.Scopes, want)
			}
			if r.Attributes != nil || r.Extra != nil {
				t.Errorf("Attributes = %v, Extra = %v, want none", r.Attributes, r.Extra)
			}
		}},
		{"only required variables", minimalVars(), func(t *testing.T, r record.Record) {
			eq(t, "RequestVerb", r.RequestVerb, "GET")
			for name, p := range map[string]bool{
				"APIProxyRevision":   r.APIProxyRevision != nil,
				"TargetResponseCode": r.TargetResponseCode != nil,
				"TotalResponseTime":  r.TotalResponseTime != nil,
				"TargetResponseTime": r.TargetResponseTime != nil,
				"RequestSize":        r.RequestSize != nil,
				"ResponseSize":       r.ResponseSize != nil,
				"IsError":            r.IsError != nil,
				"ClientIP":           r.ClientIP.IsValid(),
			} {
				if p {
					t.Errorf("%s present, want absent", name)
				}
			}
			for name, s := range map[string]string{
				"ProxyBasepath": r.ProxyBasepath, "UserAgent": r.UserAgent, "TargetHost": r.TargetHost,
				"FaultName": r.FaultName, "DeveloperApp": r.DeveloperApp, "DeveloperEmail": r.DeveloperEmail,
				"APIProduct": r.APIProduct, "ClientID": r.ClientID, "Identity.Subject": r.Identity.Subject,
				"Identity.Issuer": r.Identity.Issuer, "Identity.Email": r.Identity.Email,
			} {
				if s != "" {
					t.Errorf("%s = %q, want absent", name, s)
				}
			}
			eq(t, "Tenant", r.Tenant, "acme-prod") // ingest's default: the organization
			eq(t, "Identity.Auth", r.Identity.Auth, "none")
			if r.Identity.Scopes != nil {
				t.Errorf("Identity.Scopes = %q, want none", r.Identity.Scopes)
			}
		}},
		{"api key call served without a target", with(without(completeVars(),
			"jwt.VJ-VerifyJWT.valid", "jwt.VJ-VerifyJWT.decoded.claim.sub", "jwt.VJ-VerifyJWT.decoded.claim.iss",
			"jwt.VJ-VerifyJWT.decoded.claim.email", "jwt.VJ-VerifyJWT.decoded.claim.scope",
			"target.sent.start.timestamp", "target.received.end.timestamp", "target.host", "developer.email"),
			"verifyapikey.VA-VerifyAPIKey.client_id", "Kq3c9ZtYbXo1",
			"verifyapikey.VA-VerifyAPIKey.developer.email", "dev@example.com"),
			func(t *testing.T, r record.Record) {
				eq(t, "Identity.Auth", r.Identity.Auth, "apikey")
				// VerifyAPIKey sets only verifyapikey.{policy}.developer.email.
				eq(t, "DeveloperEmail", r.DeveloperEmail, "dev@example.com")
				eq(t, "Identity.Subject", r.Identity.Subject, "")
				eq(t, "Tenant", r.Tenant, "tenant-a")
				eqPtr(t, "TotalResponseTime", r.TotalResponseTime, ptr[int32](333))
				eqPtr(t, "TargetResponseTime", r.TargetResponseTime, nil)
				eqPtr(t, "TargetResponseCode", r.TargetResponseCode, nil)
				eq(t, "TargetHost", r.TargetHost, "")
			}},
		{"oauth2 call", with(without(minimalVars()),
			"access_token", "tok-opaque", "client_id", "cid", "scope", " read  write ",
			"accesstoken.sub", "svc-batch", "accesstoken.email", "batch@example.com", "app.tenant", "tenant-o"),
			func(t *testing.T, r record.Record) {
				eq(t, "Identity.Auth", r.Identity.Auth, "oauth2")
				eq(t, "Identity.Subject", r.Identity.Subject, "svc-batch")
				eq(t, "Identity.Email", r.Identity.Email, "batch@example.com")
				eq(t, "Tenant", r.Tenant, "tenant-o")
				if want := []string{"read", "write"}; !slices.Equal(r.Identity.Scopes, want) {
					t.Errorf("Identity.Scopes = %q, want %q", r.Identity.Scopes, want)
				}
			}},
		{"proxy overrides win", with(completeVars(),
			"timescale.in.tenant", "tenant-x", "timescale.in.subject", "sub-x", "timescale.in.issuer", "iss-x",
			"timescale.in.email", "x@example.com", "timescale.in.auth", "oauth2", "timescale.in.scopes", "x"),
			func(t *testing.T, r record.Record) {
				eq(t, "Tenant", r.Tenant, "tenant-x")
				eq(t, "Identity.Subject", r.Identity.Subject, "sub-x")
				eq(t, "Identity.Issuer", r.Identity.Issuer, "iss-x")
				eq(t, "Identity.Email", r.Identity.Email, "x@example.com")
				eq(t, "Identity.Auth", r.Identity.Auth, "oauth2")
				if want := []string{"x"}; !slices.Equal(r.Identity.Scopes, want) {
					t.Errorf("Identity.Scopes = %q, want %q", r.Identity.Scopes, want)
				}
			}},
		{"failed target call", with(completeVars(),
			"response.status.code", "502",
			"fault.name", "ServiceUnavailable", "is.error", "true", "client.ip", "2001:db8::7"),
			func(t *testing.T, r record.Record) {
				eq(t, "ResponseStatusCode", r.ResponseStatusCode, 502)
				eqPtr(t, "TargetResponseCode", r.TargetResponseCode, ptr[int16](503))
				eq(t, "FaultName", r.FaultName, "ServiceUnavailable")
				eqPtr(t, "IsError", r.IsError, ptr(true))
				eq(t, "ClientIP", r.ClientIP, netip.MustParseAddr("2001:db8::7"))
			}},
		{"numeric edge values", with(completeVars(),
			"apiproxy.revision", "0", "response.status.code", "0",
			"system.timestamp", ms(receivedAt, 0), "request.header.Content-Length", "0",
			"response.header.Content-Length", "9007199254740993"),
			func(t *testing.T, r record.Record) {
				eqPtr(t, "APIProxyRevision", r.APIProxyRevision, ptr[int32](0))
				eq(t, "ResponseStatusCode", r.ResponseStatusCode, 0)
				eqPtr(t, "TargetResponseCode", r.TargetResponseCode, ptr[int16](599))
				eqPtr(t, "TotalResponseTime", r.TotalResponseTime, ptr[int32](0))
				eqPtr(t, "RequestSize", r.RequestSize, ptr[int64](0))
				eqPtr(t, "ResponseSize", r.ResponseSize, ptr[int64](9007199254740993))
			}},
		{"over-long user agent is truncated, not rejected", with(completeVars(),
			"request.header.User-Agent.values.string", strings.Repeat("é", 300)),
			func(t *testing.T, r record.Record) {
				eq(t, "UserAgent", r.UserAgent, strings.Repeat("é", 256))
			}},
	}
	for i, s := range weirdStrings {
		if s == "" {
			continue // empty is "absent"; covered above
		}
		tests = append(tests, struct {
			name  string
			vars  map[string]string
			check func(t *testing.T, r record.Record)
		}{
			fmt.Sprintf("weird string %d", i),
			with(completeVars(),
				"apiproxy.name", s, "request.path", "/p/"+s, "proxy.basepath", s,
				"request.header.User-Agent.values.string", s, "fault.name", s, "developer.app.name", s,
				"developer.email", s, "apiproduct.name", s, "client_id", s,
				"verifyapikey.VA-VerifyAPIKey.tenant", s, "jwt.VJ-VerifyJWT.decoded.claim.sub", s,
				"jwt.VJ-VerifyJWT.decoded.claim.iss", s, "jwt.VJ-VerifyJWT.decoded.claim.email", s),
			func(t *testing.T, r record.Record) {
				eq(t, "APIProxy", r.APIProxy, s)
				eq(t, "RequestPath", r.RequestPath, "/p/"+s)
				eq(t, "ProxyBasepath", r.ProxyBasepath, s)
				eq(t, "UserAgent", r.UserAgent, s)
				eq(t, "FaultName", r.FaultName, s)
				eq(t, "DeveloperApp", r.DeveloperApp, s)
				eq(t, "DeveloperEmail", r.DeveloperEmail, s)
				eq(t, "APIProduct", r.APIProduct, s)
				eq(t, "ClientID", r.ClientID, s)
				eq(t, "Tenant", r.Tenant, s)
				eq(t, "Identity.Subject", r.Identity.Subject, s)
				eq(t, "Identity.Issuer", r.Identity.Issuer, s)
				eq(t, "Identity.Email", r.Identity.Email, s)
			},
		})
	}

	// The target's status as the target response flow sees it, for the
	// cases that reached a target and do not answer 201.
	targetStatus := map[string]string{"failed target call": "503", "numeric edge values": "599"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status := targetStatus[tt.name]
			if status == "" {
				status = "201"
			}
			data := renderCall(t, tt.vars, status)
			p := record.Parse(data, record.DefaultLimits())
			if len(p.Rejects) != 0 || len(p.Records) != 1 {
				t.Fatalf("Parse: %d records, rejects %+v\nrecord: %s", len(p.Records), p.Rejects, data)
			}
			tt.check(t, p.Records[0])
			if err := validate(schema, data); err != nil {
				t.Errorf("JSON Schema rejects an accepted record: %v\nrecord: %s", err, data)
			}
		})
	}
}

// renderCall renders a call as the two shared flows would. A call that
// reached a target (its target timestamps are set) passes the
// PostTargetFlowHook first, where response.status.code is the target's
// status; the variables that flow sets are still there at the
// PostProxyFlowHook, where response.status.code is the proxy's. The
// fixture may set only variables Apigee documents.
func renderCall(t *testing.T, vars map[string]string, targetStatus string) []byte {
	t.Helper()
	if bad := apigee.Undocumented(vars); len(bad) > 0 {
		t.Fatalf("the fixture sets variables Apigee X does not document, so never sets: %v", bad)
	}
	scope := maps.Clone(vars)
	if _, ok := vars["target.sent.start.timestamp"]; ok {
		out, err := apigee.RunTargetFlow(targetBundleDir, with(vars, "response.status.code", targetStatus))
		if err != nil {
			t.Fatalf("target flow: %v", err)
		}
		maps.Copy(scope, out)
	}
	data, err := apigee.RenderRecord(bundleDir, scope)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestRenderedRecordMissingARequiredValueIsRejected(t *testing.T) {
	schema := compileSchema(t)
	for field, kv := range requiredVars() {
		for _, base := range []struct {
			name string
			vars map[string]string
		}{{"minimal", minimalVars()}, {"complete", completeVars()}} {
			t.Run(field+"/"+base.name, func(t *testing.T) {
				data, err := apigee.RenderRecord(bundleDir, without(base.vars, kv[0]))
				if err != nil {
					t.Fatal(err)
				}
				p := record.Parse(data, record.DefaultLimits())
				if len(p.Records) != 0 || len(p.Rejects) != 1 {
					t.Fatalf("Parse: %d records, %d rejects, want exactly 1 reject\nrecord: %s", len(p.Records), len(p.Rejects), data)
				}
				rej := p.Rejects[0]
				if rej.Field != field || rej.Reason != record.ReasonMissingField {
					t.Errorf("reject field %q reason %q (%s), want field %q reason %q", rej.Field, rej.Reason, rej.Detail, field, record.ReasonMissingField)
				}
				if !json.Valid(data) {
					t.Errorf("an unresolved variable produced invalid JSON: %s", data)
				}
				if validate(schema, data) == nil {
					t.Errorf("JSON Schema accepts a record ingest rejects\nrecord: %s", data)
				}
			})
		}
	}
}

func compileSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(record.JSONSchema))
	if err != nil {
		t.Fatalf("record.JSONSchema: %v", err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat() // the schema's $comment requires it (date-time, ipv4, ipv6)
	if err := c.AddResource("record-v1.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("record-v1.schema.json")
	if err != nil {
		t.Fatalf("compile record.JSONSchema: %v", err)
	}
	if validate(s, []byte(`{"schema":"apigee.call.v1"}`)) == nil {
		t.Fatal("record.JSONSchema accepts a record without required fields; validating against it proves nothing")
	}
	return s
}

func validate(s *jsonschema.Schema, data []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return err
	}
	return s.Validate(inst)
}

func TestDeployScriptBuildsBundle(t *testing.T) {
	testkit.Tool(t, "zip", "zip")
	build := func(project, topic string) ([]byte, string, error) {
		out := filepath.Join(t.TempDir(), "bundle.zip")
		cmd := exec.Command("bash", "deploy.sh", "--build-only", out)
		cmd.Env = append(os.Environ(), "GCP_PROJECT="+project, "PUBSUB_TOPIC="+topic)
		msg, err := cmd.CombinedOutput()
		return msg, out, err
	}

	msg, out, err := build("acme-analytics-1", "apigee.calls-v1")
	if err != nil {
		t.Fatalf("deploy.sh --build-only: %v\n%s", err, msg)
	}
	zr, err := zip.OpenReader(out)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	var files []string
	for _, f := range zr.File {
		if f.FileInfo().IsDir() {
			continue
		}
		files = append(files, f.Name)
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		src, err := os.ReadFile(filepath.FromSlash(f.Name))
		if err != nil {
			t.Errorf("zip entry %s has no source file: %v", f.Name, err)
			continue
		}
		if f.Name == "sharedflowbundle/policies/"+apigee.PublishPolicy+".xml" {
			src = bytes.ReplaceAll(src, []byte("@GCP_PROJECT@"), []byte("acme-analytics-1"))
			src = bytes.ReplaceAll(src, []byte("@PUBSUB_TOPIC@"), []byte("apigee.calls-v1"))
			if !bytes.Contains(got, []byte("<Topic>projects/acme-analytics-1/topics/apigee.calls-v1</Topic>")) {
				t.Errorf("%s: topic not substituted:\n%s", f.Name, got)
			}
		}
		if !bytes.Equal(got, src) {
			t.Errorf("zip entry %s differs from its source beyond the topic substitution", f.Name)
		}
	}
	var want []string
	err = filepath.WalkDir(bundleDir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			want = append(want, filepath.ToSlash(path))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	slices.Sort(want)
	if !slices.Equal(files, want) {
		t.Errorf("zip holds %v, want %v", files, want)
	}

	// The target flow's zip: its directory under sharedflowbundle/.
	targetOut := filepath.Join(t.TempDir(), "target.zip")
	cmd := exec.Command("bash", "deploy.sh", "--build-only", filepath.Join(t.TempDir(), "publish.zip"), targetOut)
	cmd.Env = append(os.Environ(), "GCP_PROJECT=acme-analytics-1", "PUBSUB_TOPIC=apigee.calls-v1")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("deploy.sh --build-only OUT TARGET_OUT: %v\n%s", err, msg)
	}
	tz, err := zip.OpenReader(targetOut)
	if err != nil {
		t.Fatal(err)
	}
	defer tz.Close()
	var targetFiles, targetWant []string
	for _, f := range tz.File {
		if !f.FileInfo().IsDir() {
			targetFiles = append(targetFiles, f.Name)
		}
	}
	err = filepath.WalkDir(targetBundleDir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(targetBundleDir, path)
			targetWant = append(targetWant, "sharedflowbundle/"+filepath.ToSlash(rel))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(targetFiles)
	slices.Sort(targetWant)
	if !slices.Equal(targetFiles, targetWant) {
		t.Errorf("target zip holds %v, want %v", targetFiles, targetWant)
	}

	for _, bad := range [][2]string{{"acme-analytics-1", "goog-topic"}, {"acme-analytics-1", "a|b"}, {"Bad_Project", "calls"}} {
		if msg, _, err := build(bad[0], bad[1]); err == nil {
			t.Errorf("deploy.sh accepted project %q topic %q:\n%s", bad[0], bad[1], msg)
		}
	}
}

// The script's forwarded client address, on what a Google load balancer
// sends (client-supplied entries, then the client, then the balancer).
func TestForwardedClientIP(t *testing.T) {
	const lb = "203.0.113.9, 198.51.100.7, 35.191.0.1" // forged, client, balancer
	tests := []struct{ name, header, index, want string }{
		{"first hop by default", lb, "", "203.0.113.9"},
		{"the client, two from the right", lb, "-2", "198.51.100.7"},
		{"the balancer", lb, "-1", "35.191.0.1"},
		{"ipv6", "2001:db8::1", "", "2001:db8::1"},
		{"not an address", "unknown", "", ""},
		{"zone", "fe80::1%eth0", "", ""},
		{"no header", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars := map[string]string{"timescale.in.xff_index": tt.index}
			if tt.header != "" {
				vars[apigee.VarForwardedFor] = tt.header
			}
			if got := apigee.DeriveVars(vars)[apigee.VarForwardedClientIP]; got != tt.want {
				t.Errorf("forwarded client ip %q, want %q", got, tt.want)
			}
		})
	}
}

// A header with commas is recorded whole: the template must read
// request.header.{name}.values.string, since request.header.{name} is only
// the value before the first comma. X-Forwarded-For gives the forwarded
// client address.
func TestMultiValueHeadersAreRecordedWhole(t *testing.T) {
	const ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0"
	vars := map[string]string{}
	for _, kv := range requiredVars() {
		vars[kv[0]] = kv[1]
	}
	apigee.RequestHeader(vars, "User-Agent", ua)
	apigee.RequestHeader(vars, "X-Forwarded-For", "203.0.113.9, 198.51.100.7")
	data := renderCall(t, vars, "")
	p := record.Parse(data, record.DefaultLimits())
	if len(p.Records) != 1 {
		t.Fatalf("Parse: %+v\nrecord: %s", p.Rejects, data)
	}
	if got := p.Records[0].UserAgent; got != ua {
		t.Errorf("useragent %q, want %q", got, ua)
	}
	if got := p.Records[0].ForwardedClientIP.String(); got != "203.0.113.9" {
		t.Errorf("forwarded_client_ip %q, want the first X-Forwarded-For entry", got)
	}
}
