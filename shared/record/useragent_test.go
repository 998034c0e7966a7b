package record

import (
	"strings"
	"testing"
)

// A client controls its User-Agent: odd bytes in it are cleaned, never a
// reason to quarantine the record of its call.
func TestUserAgentIsCleanedNotRejected(t *testing.T) {
	tests := []struct {
		name, json, want string
	}{
		{"NUL dropped", `"a\u0000b"`, "ab"},
		{"lone surrogate replaced", `"a\udc00b"`, "a\uFFFDb"},
		{"invalid UTF-8 replaced", "\"a\xffb\"", "a\uFFFDb"},
		{"long and dirty is truncated too", `"` + strings.Repeat(`\u0000x`, 600) + `"`, strings.Repeat("x", 512)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := `{"schema":"apigee.call.v1","message_id":"m","received_at":"2025-05-31T00:00:00Z","organization":"o","environment":"e","apiproxy":"p","request_verb":"GET","request_path":"/","response_status_code":200,"useragent":` + tt.json + `}`
			r, rej := ParseRecord([]byte(raw), testLimits())
			if rej != nil {
				t.Fatalf("rejected: %+v", rej)
			}
			if r.UserAgent != tt.want {
				t.Fatalf("useragent %q, want %q", r.UserAgent, tt.want)
			}
		})
	}
}
