package apigee

import (
	"encoding/xml"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Names fixed by the bundle. The tests keep them in sync with the XML.
const (
	// SharedFlowName is the shared flow's name in Apigee and the flow hook body.
	SharedFlowName = "apigee-timescale-publish"
	// BuildPolicy is the AssignMessage policy that builds the record.
	BuildPolicy = "AM-BuildCallRecord"
	// PublishPolicy is the PublishMessage policy that sends it.
	PublishPolicy = "PM-PublishCallRecord"
	// RecordVariable holds the rendered record between the two policies.
	RecordVariable = "timescale.record"

	// TargetSharedFlowName is the second shared flow, attached to the
	// PostTargetFlowHook: it keeps the target's status, which the proxy's
	// response flow may replace before the PostProxyFlowHook.
	TargetSharedFlowName = "apigee-timescale-target"
	// CapturePolicy is its AssignMessage policy.
	CapturePolicy = "AM-CaptureTargetResponse"
	// VarTargetResponseCode is what CapturePolicy sets and the record reads.
	VarTargetResponseCode = "timescale.target_response_code"

	// Variables the JavaScript step (resources/jsc/prepare-call-record.js)
	// sets, because message templates cannot subtract or branch.
	VarTotalResponseTime  = "timescale.total_response_time"
	VarTargetResponseTime = "timescale.target_response_time"
	VarIdentityAuth       = "timescale.identity.auth"
	// VarForwardedClientIP is the validated X-Forwarded-For entry the
	// script picks; VarForwardedFor is where it reads the whole header.
	VarForwardedClientIP = "timescale.forwarded_client_ip"
	VarForwardedFor      = "request.header.X-Forwarded-For.values.string"
)

// AssignMessage is the part of an AssignMessage policy this package
// evaluates: its AssignVariable elements, in document order.
type AssignMessage struct {
	XMLName                   xml.Name         `xml:"AssignMessage"`
	Name                      string           `xml:"name,attr"`
	ContinueOnError           bool             `xml:"continueOnError,attr"`
	Enabled                   bool             `xml:"enabled,attr"`
	AssignVariables           []AssignVariable `xml:"AssignVariable"`
	IgnoreUnresolvedVariables bool             `xml:"IgnoreUnresolvedVariables"`
}

// AssignVariable is one <AssignVariable> element. Only Template and Value
// are supported; the bundle uses nothing else.
type AssignVariable struct {
	Name     string  `xml:"Name"`
	Template *string `xml:"Template"`
	Value    *string `xml:"Value"`
	Ref      *string `xml:"Ref"`
}

// Apply evaluates the AssignVariable elements in order, each seeing the
// variables set by the ones before it, and stores the results in vars.
func (am *AssignMessage) Apply(vars map[string]string) error {
	for _, av := range am.AssignVariables {
		switch {
		case av.Ref != nil:
			return fmt.Errorf("assignmessage %s: %s: <Ref> is not emulated", am.Name, av.Name)
		case av.Template != nil:
			v, err := Render(*av.Template, vars)
			if err != nil {
				return fmt.Errorf("assignmessage %s: %s: %w", am.Name, av.Name, err)
			}
			vars[av.Name] = v
		case av.Value != nil:
			vars[av.Name] = *av.Value
		default:
			return fmt.Errorf("assignmessage %s: %s: no Template or Value", am.Name, av.Name)
		}
	}
	return nil
}

// PublishMessage is the PublishMessage policy as this package reads it.
type PublishMessage struct {
	XMLName                   xml.Name    `xml:"PublishMessage"`
	Name                      string      `xml:"name,attr"`
	ContinueOnError           bool        `xml:"continueOnError,attr"`
	Enabled                   bool        `xml:"enabled,attr"`
	Source                    string      `xml:"Source"`
	Topic                     string      `xml:"CloudPubSub>Topic"`
	Attributes                []Attribute `xml:"Attributes>Attribute"`
	IgnoreUnresolvedVariables bool        `xml:"IgnoreUnresolvedVariables"`
}

// Attribute is one Pub/Sub message attribute; Value is a message template.
type Attribute struct {
	Name  string `xml:"name,attr"`
	Value string `xml:",chardata"`
}

// RenderAttributes renders the attribute templates with vars.
func (pm *PublishMessage) RenderAttributes(vars map[string]string) (map[string]string, error) {
	out := make(map[string]string, len(pm.Attributes))
	for _, a := range pm.Attributes {
		v, err := Render(strings.TrimSpace(a.Value), vars)
		if err != nil {
			return nil, fmt.Errorf("publishmessage %s: attribute %s: %w", pm.Name, a.Name, err)
		}
		out[a.Name] = v
	}
	return out, nil
}

// LoadAssignMessage parses policies/<name>.xml of the bundle as AssignMessage.
func LoadAssignMessage(bundleDir, name string) (*AssignMessage, error) {
	var am AssignMessage
	if err := readPolicy(bundleDir, name, &am); err != nil {
		return nil, err
	}
	return &am, nil
}

// LoadPublishMessage parses policies/<name>.xml of the bundle as PublishMessage.
func LoadPublishMessage(bundleDir, name string) (*PublishMessage, error) {
	var pm PublishMessage
	if err := readPolicy(bundleDir, name, &pm); err != nil {
		return nil, err
	}
	return &pm, nil
}

func readPolicy(bundleDir, name string, v any) error {
	data, err := os.ReadFile(filepath.Join(bundleDir, "policies", name+".xml"))
	if err != nil {
		return fmt.Errorf("read policy: %w", err)
	}
	if err := xml.Unmarshal(data, v); err != nil {
		return fmt.Errorf("parse policy %s: %w", name, err)
	}
	return nil
}

// LoadTemplate returns the message template that renders the record: the
// <Template> of the AssignVariable named RecordVariable in the build policy.
// Note that the template reads variables (tenant, identity) that earlier
// AssignVariable elements of the same policy derive; RenderRecord evaluates
// the whole chain.
func LoadTemplate(bundleDir string) (string, error) {
	am, err := LoadAssignMessage(bundleDir, BuildPolicy)
	if err != nil {
		return "", err
	}
	for _, av := range am.AssignVariables {
		if av.Name == RecordVariable && av.Template != nil {
			return *av.Template, nil
		}
	}
	return "", fmt.Errorf("load template: %s has no AssignVariable %s with a Template", BuildPolicy, RecordVariable)
}

// RenderRecord does what the shared flow does before publishing: it runs
// the JavaScript step's Go twin (DeriveVars), then the build policy's
// AssignVariable chain, and returns the record. vars holds the Apigee flow
// variables of one call and is not modified.
func RenderRecord(bundleDir string, vars map[string]string) ([]byte, error) {
	am, err := LoadAssignMessage(bundleDir, BuildPolicy)
	if err != nil {
		return nil, err
	}
	scope := make(map[string]string, len(vars)+8)
	for k, v := range vars {
		scope[k] = v
	}
	for k, v := range DeriveVars(vars) {
		scope[k] = v
	}
	if err := am.Apply(scope); err != nil {
		return nil, err
	}
	rec, ok := scope[RecordVariable]
	if !ok {
		return nil, errors.New("render record: build policy did not set " + RecordVariable)
	}
	return []byte(rec), nil
}

// RunTargetFlow does what the target shared flow (TargetSharedFlowName,
// bundleDir is its sharedflowbundle directory) does at the
// PostTargetFlowHook: vars are the flow variables as the target response
// flow leaves them (response.* is the target's response there). It returns
// the variables the flow sets; being flow variables, they are still set at
// the PostProxyFlowHook of the same call. A proxy that calls no target
// never reaches the PostTargetFlowHook: do not call RunTargetFlow then.
func RunTargetFlow(bundleDir string, vars map[string]string) (map[string]string, error) {
	am, err := LoadAssignMessage(bundleDir, CapturePolicy)
	if err != nil {
		return nil, err
	}
	scope := make(map[string]string, len(vars)+len(am.AssignVariables))
	for k, v := range vars {
		scope[k] = v
	}
	if err := am.Apply(scope); err != nil {
		return nil, err
	}
	out := make(map[string]string, len(am.AssignVariables))
	for _, av := range am.AssignVariables {
		out[av.Name] = scope[av.Name]
	}
	return out, nil
}

// jsReads finds the variables prepare-call-record.js reads: every string
// literal passed to its str/millis helpers or to context.getVariable, and
// the two timestamps setDuration takes.
var jsReads = regexp.MustCompile(`(?:\bstr|\bmillis|context\.getVariable)\("([^"]+)"\)|setDuration\("[^"]+",\s*"([^"]+)",\s*"([^"]+)"\)`)

// Reads returns every flow variable the bundle under bundleDir reads:
// the templates of its AssignMessage (AssignVariable) and PublishMessage
// (Source, attributes) policies and the names its JavaScript resources pass
// to getVariable. Variables the bundle sets itself are included when it
// also reads them; callers tell them apart by BundleNamespace.
func Reads(bundleDir string) ([]string, error) {
	var names []string
	add := func(ns ...string) {
		for _, n := range ns {
			if n != "" && !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	policies, err := filepath.Glob(filepath.Join(bundleDir, "policies", "*.xml"))
	if err != nil {
		return nil, fmt.Errorf("reads: %w", err)
	}
	for _, p := range policies {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reads: %w", err)
		}
		var root struct{ XMLName xml.Name }
		if err := xml.Unmarshal(data, &root); err != nil {
			return nil, fmt.Errorf("reads: %s: %w", p, err)
		}
		name := strings.TrimSuffix(filepath.Base(p), ".xml")
		var tmpls []string
		switch root.XMLName.Local {
		case "AssignMessage":
			am, err := LoadAssignMessage(bundleDir, name)
			if err != nil {
				return nil, err
			}
			for _, av := range am.AssignVariables {
				switch {
				case av.Template != nil:
					tmpls = append(tmpls, *av.Template)
				case av.Ref != nil:
					add(strings.TrimSpace(*av.Ref))
				}
			}
		case "PublishMessage":
			pm, err := LoadPublishMessage(bundleDir, name)
			if err != nil {
				return nil, err
			}
			tmpls = append(tmpls, pm.Source)
			for _, a := range pm.Attributes {
				tmpls = append(tmpls, strings.TrimSpace(a.Value))
			}
		}
		for _, t := range tmpls {
			refs, err := References(t)
			if err != nil {
				return nil, fmt.Errorf("reads: %s: %w", name, err)
			}
			add(refs...)
		}
	}
	scripts, err := filepath.Glob(filepath.Join(bundleDir, "resources", "jsc", "*.js"))
	if err != nil {
		return nil, fmt.Errorf("reads: %w", err)
	}
	for _, s := range scripts {
		data, err := os.ReadFile(s)
		if err != nil {
			return nil, fmt.Errorf("reads: %w", err)
		}
		for _, m := range jsReads.FindAllStringSubmatch(string(data), -1) {
			add(m[1:]...)
		}
	}
	return names, nil
}

// DeriveVars is the Go twin of resources/jsc/prepare-call-record.js and
// returns the variables that script sets for a call with the given flow
// variables. A test runs both on the same inputs when node is installed.
//
// Durations are end minus start in milliseconds, set only when both
// timestamps are positive numbers and the end is not before the start.
// identity.auth is the caller's override (timescale.in.auth) or the first
// verification that succeeded under the bundle's policy-name conventions:
// VerifyJWT "VJ-VerifyJWT" → jwt, OAuthV2 VerifyAccessToken → oauth2 (it sets
// access_token), VerifyAPIKey (any name: it sets client_id) → apikey, else none.
func DeriveVars(vars map[string]string) map[string]string {
	out := make(map[string]string, 3)
	if d, ok := duration(vars["system.timestamp"], vars["client.received.start.timestamp"]); ok {
		out[VarTotalResponseTime] = d
	}
	if d, ok := duration(vars["target.received.end.timestamp"], vars["target.sent.start.timestamp"]); ok {
		out[VarTargetResponseTime] = d
	}
	auth := vars["timescale.in.auth"]
	switch {
	case auth != "":
	case vars["jwt.VJ-VerifyJWT.valid"] == "true":
		auth = "jwt"
	case vars["access_token"] != "":
		auth = "oauth2"
	case vars["verifyapikey.VA-VerifyAPIKey.client_id"] != "" || vars["client_id"] != "":
		auth = "apikey"
	default:
		auth = "none"
	}
	out[VarIdentityAuth] = auth
	if ip := forwardedClientIP(vars); ip != "" {
		out[VarForwardedClientIP] = ip
	}
	return out
}

// forwardedClientIP mirrors the script: the X-Forwarded-For entry at index
// timescale.in.xff_index (default 0; negative counts from the right, as
// Apigee's environment client IP resolution counts ipHeaderIndex), when it
// is an IP address without zone. netip is the reference the script's
// hand-written parser is tested against (TestScriptMatchesDeriveVars), so
// that ingest's inet parse accepts whatever the script lets through.
func forwardedClientIP(vars map[string]string) string {
	header := vars[VarForwardedFor]
	if header == "" {
		return ""
	}
	index := 0
	if s := strings.TrimSpace(vars["timescale.in.xff_index"]); xffIndex.MatchString(s) {
		index, _ = strconv.Atoi(s)
	}
	hops := strings.Split(header, ",")
	if index < 0 {
		index += len(hops)
	}
	if index < 0 || index >= len(hops) {
		return ""
	}
	ip := strings.Trim(hops[index], " \t")
	if a, err := netip.ParseAddr(ip); err != nil || a.Zone() != "" || len(ip) > 45 {
		return ""
	}
	return ip
}

var xffIndex = regexp.MustCompile(`^-?[0-9]{1,3}$`)

// duration mirrors the script: both values must be 1 to 15 decimal digits
// (Apigee timestamps are epoch milliseconds; 15 digits stay exact in a
// JavaScript number), the start positive and the end not before it.
func duration(end, start string) (string, bool) {
	e, ok1 := millis(end)
	s, ok2 := millis(start)
	if !ok1 || !ok2 || s <= 0 || e < s {
		return "", false
	}
	return strconv.FormatInt(e-s, 10), true
}

func millis(v string) (int64, bool) {
	v = strings.TrimSpace(v)
	if len(v) == 0 || len(v) > 15 {
		return 0, false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}
