package record

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func ptr[T any](v T) *T { return &v }

func readCorpus(tb testing.TB, path string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "corpus", path))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func mustParseRecord(tb testing.TB, raw []byte) Record {
	tb.Helper()
	r, rej := ParseRecord(raw, testLimits())
	if rej != nil {
		tb.Fatalf("rejected: %s %s: %s", rej.Reason, rej.Field, rej.Detail)
	}
	return r
}

func TestParseRecordFullTemplateRecord(t *testing.T) {
	got := mustParseRecord(t, readCorpus(t, "good/apigee_template_strings.json"))
	want := Record{
		MessageID:          "rrt-0b1c2d3e4f5a6b7c8-a-eu-12345-6789012-1",
		ReceivedAt:         time.Date(2025, 5, 31, 12, 34, 56, 789e6, time.UTC),
		Organization:       "acme-prod",
		Environment:        "prod",
		APIProxy:           "orders-v1",
		APIProxyRevision:   ptr[int32](7),
		ProxyBasepath:      "/orders/v1",
		RequestVerb:        "GET",
		RequestPath:        "/orders/v1/items/42",
		ResponseStatusCode: 200,
		TargetResponseCode: ptr[int16](200),
		TotalResponseTime:  ptr[int32](87),
		TargetResponseTime: ptr[int32](61),
		RequestSize:        ptr[int64](0),
		ResponseSize:       ptr[int64](1532),
		ClientIP:           netip.MustParseAddr("203.0.113.7"),
		UserAgent:          "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
		TargetHost:         "orders.internal.example",
		IsError:            ptr(false),
		DeveloperApp:       "acme-mobile",
		DeveloperEmail:     "dev@example.com",
		APIProduct:         "orders-basic",
		ClientID:           "kF3p9QxT7bYz2LmN8rWv",
		Tenant:             "acme",
		Identity: Identity{Subject: "user-123", Issuer: "https://idp.example.com/", Email: "jane@example.com",
			Auth: "oauth2", Scopes: []string{"orders.read", "orders.write"}},
		Attributes: map[string]string{"tier": "gold", "region": "eu-west1"},
	}
	if d := diffRecords(got, want); d != "" {
		t.Error(d)
	}
}

// TestParseRecordNormalises pins every normalisation rule on one field each.
func TestParseRecordNormalises(t *testing.T) {
	tests := []struct {
		name  string
		field string
		value string // raw JSON
		check func(r Record) bool
	}{
		{"RFC 3339 offset to UTC, truncated to ms", "received_at", `"2025-05-31T14:34:56.789999+02:00"`,
			func(r Record) bool { return r.ReceivedAt.Equal(time.Date(2025, 5, 31, 12, 34, 56, 789e6, time.UTC)) }},
		{"negative offset crossing midnight", "received_at", `"2025-05-30T23:30:00.5-01:00"`,
			func(r Record) bool { return r.ReceivedAt.Equal(time.Date(2025, 5, 31, 0, 30, 0, 500e6, time.UTC)) }},
		{"epoch ms number", "received_at", `1748694896789`,
			func(r Record) bool { return r.ReceivedAt.Equal(time.UnixMilli(1748694896789)) }},
		{"epoch ms string", "received_at", `"1748694896789"`,
			func(r Record) bool { return r.ReceivedAt.Equal(time.UnixMilli(1748694896789)) }},
		{"leap second", "received_at", `"2016-12-31T23:59:60.25Z"`,
			func(r Record) bool { return r.ReceivedAt.Equal(time.Date(2016, 12, 31, 23, 59, 59, 999e6, time.UTC)) }},
		{"verb upper-cased", "request_verb", `"pAtCh"`, func(r Record) bool { return r.RequestVerb == "PATCH" }},
		{"uncommon verb upper-cased", "request_verb", `"propfind"`, func(r Record) bool { return r.RequestVerb == "PROPFIND" }},
		{"query stripped", "request_path", `"/a/b?token=secret&x=1"`, func(r Record) bool { return r.RequestPath == "/a/b" }},
		{"SQL kept verbatim", "request_path", `"/x';DROP TABLE t;--"`, func(r Record) bool { return r.RequestPath == "/x';DROP TABLE t;--" }},
		{"IPv4-mapped unmapped", "client_ip", `"::ffff:192.0.2.1"`, func(r Record) bool { return r.ClientIP == netip.MustParseAddr("192.0.2.1") }},
		{"IPv6 kept", "client_ip", `"2001:DB8::1"`, func(r Record) bool { return r.ClientIP == netip.MustParseAddr("2001:db8::1") }},
		{"empty client_ip absent", "client_ip", `""`, func(r Record) bool { return !r.ClientIP.IsValid() }},
		{"useragent truncated on a rune boundary", "useragent", `"` + strings.Repeat("a", 511) + `é tail"`,
			func(r Record) bool { return r.UserAgent == strings.Repeat("a", 511) }},
		{"useragent of exactly 512 bytes kept", "useragent", `"` + strings.Repeat("a", 510) + `é"`,
			func(r Record) bool { return r.UserAgent == strings.Repeat("a", 510)+"é" }},
		{"tenant defaults to organization", "tenant", `""`, func(r Record) bool { return r.Tenant == "acme" }},
		{"tenant kept", "tenant", `"t1"`, func(r Record) bool { return r.Tenant == "t1" }},
		{"is_error string", "is_error", `"true"`, func(r Record) bool { return r.IsError != nil && *r.IsError }},
		{"is_error false", "is_error", `false`, func(r Record) bool { return r.IsError != nil && !*r.IsError }},
		{"is_error null absent", "is_error", `null`, func(r Record) bool { return r.IsError == nil }},
		{"numeric string", "response_size", `"0012"`, func(r Record) bool { return *r.ResponseSize == 12 }},
		{"integral float", "response_status_code", `404.0`, func(r Record) bool { return r.ResponseStatusCode == 404 }},
		{"exponent", "request_size", `1.5E3`, func(r Record) bool { return *r.RequestSize == 1500 }},
		{"int64 max exact", "request_size", `9223372036854775807`, func(r Record) bool { return *r.RequestSize == 1<<63-1 }},
		{"zero is present, not absent", "target_response_code", `0`, func(r Record) bool { return r.TargetResponseCode != nil && *r.TargetResponseCode == 0 }},
		{"empty numeric string absent", "total_response_time", `""`, func(r Record) bool { return r.TotalResponseTime == nil }},
		{"scopes string split", "identity", `{"scopes":"  a  b\tc "}`, func(r Record) bool { return reflect.DeepEqual(r.Identity.Scopes, []string{"a", "b", "c"}) }},
		{"scopes array, empties dropped", "identity", `{"scopes":["a","","b"]}`, func(r Record) bool { return reflect.DeepEqual(r.Identity.Scopes, []string{"a", "b"}) }},
		{"empty identity", "identity", `{}`, func(r Record) bool { return reflect.DeepEqual(r.Identity, Identity{}) }},
		{"unknown identity members ignored", "identity", `{"auth":"jwt","roles":["x"]}`, func(r Record) bool { return reflect.DeepEqual(r.Identity, Identity{Auth: "jwt"}) }},
		{"empty attributes nil", "attributes", `{}`, func(r Record) bool { return r.Attributes == nil }},
		{"attributes kept", "attributes", `{"a":"","b":"c"}`, func(r Record) bool { return reflect.DeepEqual(r.Attributes, map[string]string{"a": "", "b": "c"}) }},
		{"unknown field kept verbatim", "x_new", `{ "a" : [1, 2.50, "\u00e9"] }`, func(r Record) bool { return string(r.Extra["x_new"]) == `{"a":[1,2.50,"\u00e9"]}` }}, // withField compacts
		{"escapes decoded", "developer_app", `"a\"b\\c\/d\u00e9\ud83d\ude00\n"`, func(r Record) bool { return r.DeveloperApp == "a\"b\\c/dé😀\n" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustParseRecord(t, withField(t, tt.field, tt.value))
			if !tt.check(r) {
				t.Errorf("%s = %s gave %+v", tt.field, tt.value, r)
			}
			if tt.field != "x_new" && r.Extra != nil {
				t.Errorf("Extra = %v, want nil", r.Extra)
			}
		})
	}
}

func TestParseRecordOutlivesItsInput(t *testing.T) {
	raw := withField(t, "x", `{"y":"z"}`)
	r := mustParseRecord(t, raw)
	want := mustParseRecord(t, bytes.Clone(raw))
	for i := range raw {
		raw[i] = ' ' // a reused buffer must not change the record
	}
	if d := diffRecords(r, want); d != "" {
		t.Error(d)
	}
}

func TestParseRecordLogEntry(t *testing.T) {
	record := string(withField(t, "tenant", `"t9"`))
	tests := []struct {
		name         string
		raw          string
		reason, fld  string
		wantRecordOK bool
	}{
		{"jsonPayload", `{"insertId":"abc","logName":"projects/p/logs/apigee","resource":{"type":"api","labels":{"a":"b"}},` +
			`"timestamp":"2025-05-31T12:00:01Z","severity":"INFO","jsonPayload":` + record + `}`, "", "", true},
		{"payload error names the record field", `{"logName":"l","jsonPayload":{"schema":"apigee.call.v1"}}`, ReasonMissingField, "message_id", false},
		{"payload not an object", `{"logName":"l","jsonPayload":"{}"}`, ReasonInvalidField, "jsonPayload", false},
		{"textPayload", `{"logName":"l","insertId":"x","textPayload":"{\"schema\":\"apigee.call.v1\"}"}`, ReasonMissingField, "jsonPayload", false},
		{"duplicate jsonPayload", `{"jsonPayload":` + record + `,"jsonPayload":` + record + `}`, ReasonInvalidField, "jsonPayload", false},
		{"record with schema is not a LogEntry", `{"schema":"apigee.call.v1","jsonPayload":` + record + `}`, ReasonMissingField, "message_id", false},
		{"LogEntry in a LogEntry is not unwrapped twice", `{"jsonPayload":{"jsonPayload":` + record + `}}`, ReasonMissingField, "schema", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rej := ParseRecord([]byte(tt.raw), testLimits())
			if tt.wantRecordOK {
				if rej != nil {
					t.Fatalf("rejected: %+v", rej)
				}
				if r.Tenant != "t9" || r.Extra != nil {
					t.Errorf("record = %+v; want the payload, without LogEntry fields in Extra", r)
				}
				return
			}
			if rej == nil || rej.Reason != tt.reason || rej.Field != tt.fld {
				t.Fatalf("reject = %+v, want %s on %q", rej, tt.reason, tt.fld)
			}
			if string(rej.Raw) != tt.raw {
				t.Errorf("Raw is not the whole LogEntry")
			}
		})
	}
}

func TestParseRecordLimits(t *testing.T) {
	big := withField(t, "x", `"`+strings.Repeat("a", 1<<20)+`"`)
	_, rej := ParseRecord(big, testLimits())
	if rej == nil || rej.Reason != ReasonRecordTooLarge {
		t.Fatalf("1 MiB record: %+v, want record_too_large", rej)
	}
	lim := testLimits()
	lim.MaxRecordBytes = len(big)
	if _, rej := ParseRecord(big, lim); rej != nil {
		t.Fatalf("record at MaxRecordBytes rejected: %s", rej.Detail)
	}

	lim = testLimits()
	lim.MaxFuture = time.Minute
	lim.MinReceivedAt = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for value, ok := range map[string]bool{
		`"2025-06-01T00:01:00Z"`:     true,
		`"2025-06-01T00:01:00.001Z"`: false,
		`"2025-01-01T00:00:00Z"`:     true,
		`"2024-12-31T23:59:59.999Z"`: false,
	} {
		_, rej := ParseRecord(withField(t, "received_at", value), lim)
		if (rej == nil) != ok {
			t.Errorf("received_at %s with custom limits: reject %+v, want ok=%v", value, rej, ok)
		}
	}
}

func TestDefaultLimits(t *testing.T) {
	d := DefaultLimits()
	if d.MaxRecordBytes != 1<<20 || d.MaxMessageBytes != 10_000_000 || d.MaxRecords != 10_000 || d.MaxFuture != time.Hour ||
		!d.MinReceivedAt.Equal(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)) || d.Now == nil {
		t.Errorf("DefaultLimits() = %+v", d)
	}
	z := Limits{}.withDefaults()
	if z.MaxRecordBytes != d.MaxRecordBytes || z.MaxMessageBytes != d.MaxMessageBytes || z.MaxRecords != d.MaxRecords ||
		z.MaxFuture != d.MaxFuture || !z.MinReceivedAt.Equal(d.MinReceivedAt) || z.Now == nil {
		t.Errorf("Limits{} does not take the defaults: %+v", z)
	}
}

// TestRejectDetails: Details are short, name the problem and hint at the
// usual shipper mistakes.
func TestRejectDetails(t *testing.T) {
	tests := []struct {
		field, value string
		want         string
	}{
		{"received_at", `1748694896`, "epoch seconds where milliseconds are expected"},
		{"received_at", `"1748694896789000"`, "micro- or nanoseconds"},
		{"received_at", `"2025-13-01T00:00:00Z"`, "RFC 3339"},
		{"response_status_code", `700`, "700 is out of range 0–599"},
		{"response_status_code", `""`, "required field response_status_code is an empty string"},
		{"request_size", `-3`, "negative"},
		{"organization", `"` + strings.Repeat("o", 5000) + `"`, "5000 bytes long, the limit is 128"},
		{"client_ip", `"` + strings.Repeat("9", 5000) + `"`, "is not an IPv4 or IPv6 address"},
		{"developer_app", `"a\u0000"`, "NUL"},
		{"schema", `"apigee.call.v9"`, `"apigee.call.v9" is not apigee.call.v1`},
	}
	for _, tt := range tests {
		_, rej := ParseRecord(withField(t, tt.field, tt.value), testLimits())
		if rej == nil {
			t.Errorf("%s = %.40s accepted", tt.field, tt.value)
			continue
		}
		if !strings.Contains(rej.Detail, tt.want) {
			t.Errorf("%s = %.40s: detail %q does not contain %q", tt.field, tt.value, rej.Detail, tt.want)
		}
		if len(rej.Detail) > 300 || strings.Contains(rej.Detail, strings.Repeat("9", 100)) {
			t.Errorf("detail quotes too much input: %d bytes", len(rej.Detail))
		}
	}
}

func TestJSONUint(t *testing.T) {
	tests := []struct {
		tok  string
		want uint64
		err  numErr
	}{
		{"0", 0, numOK}, {"-0", 0, numOK}, {"0.000", 0, numOK}, {"0e999999999999", 0, numOK}, {"-0.0e-5", 0, numOK},
		{"7", 7, numOK}, {"7.0", 7, numOK}, {"70e-1", 7, numOK}, {"0.7e1", 7, numOK}, {"700E-2", 7, numOK},
		{"1e19", 1e19, numOK}, {"18446744073709551615", 1<<64 - 1, numOK}, {"18446744073709551616", 0, numTooLarge},
		{"1e20", 0, numTooLarge}, {"1e999999999999999999999", 0, numTooLarge}, {"0.5", 0, numNotInteger},
		{"1e-1", 0, numNotInteger}, {"1e-999999999999999", 0, numNotInteger}, {"-1", 0, numNegative},
		{"-1e999999", 0, numNegative}, {"-0.5", 0, numNotInteger}, {"123456789.123456789e9", 123456789123456789, numOK},
	}
	for _, tt := range tests {
		got, err := jsonUint([]byte(tt.tok))
		if got != tt.want || err != tt.err {
			t.Errorf("jsonUint(%s) = %d, %d; want %d, %d", tt.tok, got, err, tt.want, tt.err)
		}
	}
}
