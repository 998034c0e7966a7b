package apigee

import (
	"regexp"
	"strings"
)

// The flow variables Apigee X documents, as this emulation knows them. A
// variable the documentation does not list is never set by Apigee, so a
// template that reads it renders "" there: Documented lets the tests refuse
// such a variable in the bundle and in their fixtures, instead of feeding
// the emulation a value the real runtime would never have (which is how
// target.response.status.code once looked like a working source).
//
// Each entry names the page it comes from, so it can be re-checked when
// Google changes the documentation:
//
//	refVariables https://cloud.google.com/apigee/docs/api-platform/reference/variables-reference
//	refVerifyKey https://cloud.google.com/apigee/docs/api-platform/reference/policies/verify-api-key-policy (Flow variables)
//	refOAuthV2   https://cloud.google.com/apigee/docs/api-platform/reference/policies/oauthv2-policy (VerifyAccessToken flow variables)
//	refVerifyJWT https://cloud.google.com/apigee/docs/api-platform/reference/policies/verify-jwt-policy (Flow variables)
//	refMultiValue https://cloud.google.com/apigee/docs/api-platform/antipatterns/multi-value-http-headers
const (
	refVariables = "https://cloud.google.com/apigee/docs/api-platform/reference/variables-reference"
	refVerifyKey = "https://cloud.google.com/apigee/docs/api-platform/reference/policies/verify-api-key-policy"
	refOAuthV2   = "https://cloud.google.com/apigee/docs/api-platform/reference/policies/oauthv2-policy"
	refVerifyJWT = "https://cloud.google.com/apigee/docs/api-platform/reference/policies/verify-jwt-policy"
	// The antipattern page documents request.header.{name}.values.string
	// beside request.header.{name}, which holds only the first value.
	refMultiValue = "https://cloud.google.com/apigee/docs/api-platform/antipatterns/multi-value-http-headers"
	// BundleNamespace prefixes every variable the bundle itself sets (and
	// the timescale.in.* overrides a proxy may set for it).
	BundleNamespace = "timescale."
)

// documented maps an exact variable name to its page.
var documented = map[string]string{
	"messageid":                       refVariables,
	"organization.name":               refVariables,
	"environment.name":                refVariables,
	"apiproxy.name":                   refVariables,
	"apiproxy.revision":               refVariables,
	"proxy.basepath":                  refVariables,
	"request.verb":                    refVariables,
	"request.path":                    refVariables,
	"response.status.code":            refVariables,
	"client.ip":                       refVariables,
	"client.received.start.timestamp": refVariables,
	"system.timestamp":                refVariables,
	"target.sent.start.timestamp":     refVariables,
	"target.received.end.timestamp":   refVariables,
	"target.host":                     refVariables,
	"fault.name":                      refVariables,
	"is.error":                        refVariables,
	// Set by VerifyAPIKey (its "analytics" variables) and by OAuthV2
	// VerifyAccessToken; developer.email by VerifyAccessToken only, which
	// is why the bundle falls back to verifyapikey.{policy}.developer.email.
	"developer.app.name": refOAuthV2,
	"developer.email":    refOAuthV2,
	"apiproduct.name":    refOAuthV2,
	"client_id":          refOAuthV2,
	"access_token":       refOAuthV2,
	"scope":              refOAuthV2,
}

// documentedPatterns are the documented families ({name} parts).
var documentedPatterns = []struct {
	re  *regexp.Regexp
	ref string
}{
	{regexp.MustCompile(`^request\.header\.[A-Za-z0-9-]+$`), refVariables},
	// request.header.{name}.values.string: every value of a header, commas
	// and all; request.header.{name} alone is only the first value, which
	// cuts a User-Agent or an X-Forwarded-For at its first comma.
	{regexp.MustCompile(`^request\.header\.[A-Za-z0-9-]+\.values\.string$`), refMultiValue},
	{regexp.MustCompile(`^response\.header\.[A-Za-z0-9-]+$`), refVariables},
	// verifyapikey.{policy_name}.client_id, .developer.email,
	// .developer.app.name, .apiproduct.name, .app.name, custom attributes…
	{regexp.MustCompile(`^verifyapikey\.[A-Za-z0-9_-]+\.[A-Za-z0-9_.-]+$`), refVerifyKey},
	// accesstoken.{custom_attribute} (token attributes) and
	// app.{custom_attribute} (the developer app's attributes).
	{regexp.MustCompile(`^accesstoken\.[A-Za-z0-9_-]+$`), refOAuthV2},
	{regexp.MustCompile(`^app\.[A-Za-z0-9_-]+$`), refOAuthV2},
	// jwt.{policy_name}.valid and jwt.{policy_name}.decoded.claim.{claim}.
	{regexp.MustCompile(`^jwt\.[A-Za-z0-9_-]+\.valid$`), refVerifyJWT},
	{regexp.MustCompile(`^jwt\.[A-Za-z0-9_-]+\.decoded\.claim\.[A-Za-z0-9_-]+$`), refVerifyJWT},
}

// Documented reports whether Apigee X documents a flow variable of this
// name, and the page that does. Variables in the bundle's own namespace
// (BundleNamespace) are not Apigee's and are not documented.
func Documented(name string) (page string, ok bool) {
	if p, ok := documented[name]; ok {
		return p, true
	}
	for _, d := range documentedPatterns {
		if d.re.MatchString(name) {
			return d.ref, true
		}
	}
	return "", false
}

// Undocumented returns the names in vars that are neither documented nor
// in the bundle's namespace: what a fixture must not set, because Apigee
// never would.
func Undocumented(vars map[string]string) []string {
	var out []string
	for k := range vars {
		if strings.HasPrefix(k, BundleNamespace) {
			continue
		}
		if _, ok := Documented(k); !ok {
			out = append(out, k)
		}
	}
	return out
}

// RequestHeader sets the flow variables Apigee derives from one request
// header as it arrived: request.header.{name} is only its first value, a
// header being split at commas into values, and
// request.header.{name}.values.string is all of them, commas included
// (refMultiValue). A fixture that sets a header through here cannot hide a
// template that reads the first value of a header that has several.
func RequestHeader(vars map[string]string, name, value string) {
	first, _, _ := strings.Cut(value, ",")
	vars["request.header."+name] = strings.TrimSpace(first)
	vars["request.header."+name+".values.string"] = value
}
