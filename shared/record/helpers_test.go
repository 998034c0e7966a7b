package record

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

// testNow is the clock of every test, so corpus timestamps stay valid.
var testNow = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

func testLimits() Limits {
	l := DefaultLimits()
	l.Now = func() time.Time { return testNow }
	return l
}

type corpusCase struct {
	dir, name string
	raw       []byte
	reason    string // expected Reject.Reason; "" for good records
	field     string // expected Reject.Field
}

// loadCorpus reads testdata/corpus/<dir>/*.json. Names of rejected records
// are <reason>__<field>__<what>.json, with "-" for an empty field.
func loadCorpus(tb testing.TB, dir string) []corpusCase {
	tb.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "corpus", dir, "*.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var cases []corpusCase
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		c := corpusCase{dir: dir, name: strings.TrimSuffix(filepath.Base(p), ".json"), raw: raw}
		if dir != "good" {
			parts := strings.Split(c.name, "__")
			if len(parts) != 3 {
				tb.Fatalf("%s: want <reason>__<field>__<what>.json", p)
			}
			c.reason, c.field = parts[0], parts[1]
			if c.field == "-" {
				c.field = ""
			}
		}
		cases = append(cases, c)
	}
	return cases
}

var reasons = []string{ReasonNotJSON, ReasonUnknownSchema, ReasonMissingField, ReasonInvalidField,
	ReasonRecordTooLarge, ReasonTooManyRecords, ReasonMessageTooLarge, ReasonEmptyMessage}

// encodeRecord renders a Record back into an apigee.call.v1 object, the way
// a well-behaved gateway would send it.
func encodeRecord(tb testing.TB, r Record) []byte {
	tb.Helper()
	m := map[string]any{
		"schema":               SchemaV1,
		"message_id":           r.MessageID,
		"received_at":          r.ReceivedAt.Format(time.RFC3339Nano),
		"organization":         r.Organization,
		"environment":          r.Environment,
		"apiproxy":             r.APIProxy,
		"proxy_basepath":       r.ProxyBasepath,
		"request_verb":         r.RequestVerb,
		"request_path":         r.RequestPath,
		"response_status_code": r.ResponseStatusCode,
		"useragent":            r.UserAgent,
		"target_host":          r.TargetHost,
		"fault_name":           r.FaultName,
		"developer_app":        r.DeveloperApp,
		"developer_email":      r.DeveloperEmail,
		"api_product":          r.APIProduct,
		"client_id":            r.ClientID,
		"tenant":               r.Tenant,
		"identity": map[string]any{
			"subject": r.Identity.Subject,
			"issuer":  r.Identity.Issuer,
			"email":   r.Identity.Email,
			"auth":    r.Identity.Auth,
			"scopes":  r.Identity.Scopes,
		},
		"attributes": r.Attributes,
	}
	if r.APIProxyRevision != nil {
		m["apiproxy_revision"] = *r.APIProxyRevision
	}
	if r.TargetResponseCode != nil {
		m["target_response_code"] = *r.TargetResponseCode
	}
	if r.TotalResponseTime != nil {
		m["total_response_time"] = *r.TotalResponseTime
	}
	if r.TargetResponseTime != nil {
		m["target_response_time"] = *r.TargetResponseTime
	}
	if r.RequestSize != nil {
		m["request_size"] = *r.RequestSize
	}
	if r.ResponseSize != nil {
		m["response_size"] = *r.ResponseSize
	}
	if r.IsError != nil {
		m["is_error"] = *r.IsError
	}
	if r.ClientIP.IsValid() {
		m["client_ip"] = r.ClientIP.String()
	}
	for k, v := range r.Extra {
		if _, known := m[k]; known || lookupField([]byte(k)) != fUnknown {
			tb.Fatalf("Extra holds the known field %q", k)
		}
		m[k] = v
	}
	// Without HTML escaping: json.Marshal would rewrite "&" in a kept unknown
	// field as "\u0026", the same JSON value in other bytes, and Extra keeps
	// the bytes it was sent.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		tb.Fatalf("encoding a parsed record: %v", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// checkRecord re-validates the invariants of a normalised Record.
func checkRecord(r Record, lim Limits) error {
	now := lim.Now()
	strs := map[string]string{
		"MessageID": r.MessageID, "Organization": r.Organization, "Environment": r.Environment,
		"APIProxy": r.APIProxy, "ProxyBasepath": r.ProxyBasepath, "RequestVerb": r.RequestVerb,
		"RequestPath": r.RequestPath, "UserAgent": r.UserAgent, "TargetHost": r.TargetHost,
		"FaultName": r.FaultName, "DeveloperApp": r.DeveloperApp, "DeveloperEmail": r.DeveloperEmail,
		"APIProduct": r.APIProduct, "ClientID": r.ClientID, "Tenant": r.Tenant,
		"Identity.Subject": r.Identity.Subject, "Identity.Issuer": r.Identity.Issuer, "Identity.Email": r.Identity.Email,
	}
	for i, s := range r.Identity.Scopes {
		strs[fmt.Sprint("Identity.Scopes", i)] = s
		if s == "" {
			return fmt.Errorf("empty scope")
		}
	}
	for k, v := range r.Attributes {
		strs["Attributes key "+k] = k
		strs["Attributes["+k+"]"] = v
	}
	for name, s := range strs {
		if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
			return fmt.Errorf("%s %q is not valid UTF-8 without NUL", name, s)
		}
	}
	maxLen := map[string]int{"MessageID": 128, "Organization": 128, "Environment": 128, "APIProxy": 255,
		"ProxyBasepath": 1024, "RequestVerb": 32, "RequestPath": 2048, "UserAgent": 512, "TargetHost": 255,
		"FaultName": 255, "Tenant": 128}
	for name, n := range maxLen {
		if len(strs[name]) > n {
			return fmt.Errorf("%s is %d bytes long", name, len(strs[name]))
		}
	}
	for _, name := range []string{"MessageID", "Organization", "Environment", "APIProxy", "RequestVerb", "RequestPath", "Tenant"} {
		if strs[name] == "" {
			return fmt.Errorf("%s is empty", name)
		}
	}
	if strings.IndexFunc(r.MessageID, unicode.IsControl) >= 0 {
		return fmt.Errorf("MessageID has a control character")
	}
	if strings.Trim(r.RequestVerb, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != "" {
		return fmt.Errorf("RequestVerb %q is not upper-case letters", r.RequestVerb)
	}
	if strings.Contains(r.RequestPath, "?") {
		return fmt.Errorf("RequestPath %q has a query", r.RequestPath)
	}
	if r.ReceivedAt.Location() != time.UTC || r.ReceivedAt.Nanosecond()%int(time.Millisecond) != 0 ||
		r.ReceivedAt.Before(lim.MinReceivedAt) || r.ReceivedAt.After(now.Add(lim.MaxFuture)) {
		return fmt.Errorf("ReceivedAt %v is not UTC, ms precision, within limits", r.ReceivedAt)
	}
	if r.ResponseStatusCode < 0 || r.ResponseStatusCode > 599 ||
		r.TargetResponseCode != nil && (*r.TargetResponseCode < 0 || *r.TargetResponseCode > 599) {
		return fmt.Errorf("status code out of range")
	}
	for _, p := range []*int32{r.APIProxyRevision, r.TotalResponseTime, r.TargetResponseTime} {
		if p != nil && *p < 0 {
			return fmt.Errorf("negative int32")
		}
	}
	for _, p := range []*int64{r.RequestSize, r.ResponseSize} {
		if p != nil && *p < 0 {
			return fmt.Errorf("negative int64")
		}
	}
	if r.ClientIP.IsValid() && (r.ClientIP.Is4In6() || r.ClientIP.Zone() != "") {
		return fmt.Errorf("ClientIP %v is mapped or zoned", r.ClientIP)
	}
	if !slices.Contains([]string{"", "oauth2", "jwt", "apikey", "none"}, r.Identity.Auth) {
		return fmt.Errorf("Identity.Auth %q", r.Identity.Auth)
	}
	if len(r.Attributes) > 32 || r.Attributes != nil && len(r.Attributes) == 0 {
		return fmt.Errorf("Attributes has %d keys", len(r.Attributes))
	}
	if r.Extra != nil && len(r.Extra) == 0 {
		return fmt.Errorf("empty non-nil Extra")
	}
	for k, v := range r.Extra {
		var x any
		if !utf8.Valid(v) || json.Unmarshal(v, &x) != nil || hasNUL(x) {
			return fmt.Errorf("Extra[%q] = %s is not storable JSON", k, v)
		}
	}
	return nil
}

func hasNUL(x any) bool {
	switch x := x.(type) {
	case string:
		return strings.IndexByte(x, 0) >= 0
	case []any:
		return slices.ContainsFunc(x, hasNUL)
	case map[string]any:
		for k, v := range x {
			if strings.IndexByte(k, 0) >= 0 || hasNUL(v) {
				return true
			}
		}
	}
	return false
}

// diffRecords describes how two records differ, "" if they do not; Extra
// values are compared as JSON (whitespace aside).
func diffRecords(a, b Record) string {
	if !a.ReceivedAt.Equal(b.ReceivedAt) {
		return fmt.Sprintf("ReceivedAt %v != %v", a.ReceivedAt, b.ReceivedAt)
	}
	if len(a.Extra) != len(b.Extra) {
		return fmt.Sprintf("Extra %v != %v", a.Extra, b.Extra)
	}
	for k, v := range a.Extra {
		var x, y bytes.Buffer
		if json.Compact(&x, v) != nil || json.Compact(&y, b.Extra[k]) != nil || x.String() != y.String() {
			return fmt.Sprintf("Extra[%q] %s != %s", k, v, b.Extra[k])
		}
	}
	a.ReceivedAt, b.ReceivedAt, a.Extra, b.Extra = time.Time{}, time.Time{}, nil, nil
	if !reflect.DeepEqual(a, b) {
		return fmt.Sprintf("%+v\n!= %+v", a, b)
	}
	return ""
}
