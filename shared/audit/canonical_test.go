package audit

import (
	"encoding/json"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// TestCanonicalFastPaths: the shortcuts appendCanonical takes for strings,
// timestamps and addresses write exactly what strconv.Quote and
// json.Marshal do, which the stored hashes were computed with.
func TestCanonicalFastPaths(t *testing.T) {
	for _, v := range []any{"", "plain /v1/items?id=1&x=y", `quote " inside`, `back\slash`, "tab\there", "nul\x00", "é ü ✓",
		"\x7f", "~", "bad \xff utf-8", "line\nbreak"} {
		if got, want := string(appendCanonical(nil, v)), strconv.Quote(v.(string)); got != want {
			t.Errorf("%q: got %s, want %s", v, got, want)
		}
	}
	times := []time.Time{time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC), time.Date(1, 1, 1, 0, 0, 0, 0, time.FixedZone("x", 3600)),
		time.Unix(0, 0), time.Unix(-1, 999), time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-1, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2024, 2, 29, 12, 0, 0, 1000, time.FixedZone("y", -9*3600-1800))}
	for i := range 1000 { // one every 11 days and some seconds, 1970 to 2000
		times = append(times, time.Unix(int64(i)*(11*86400+4567), int64(i)*7919))
	}
	for _, at := range times {
		if got, want := string(appendCanonical(nil, at)), strconv.Quote(at.UTC().Format("2006-01-02T15:04:05.000000Z07:00")); got != want {
			t.Errorf("%v: got %s, want %s", at, got, want)
		}
	}
	for _, a := range []netip.Addr{netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("::ffff:1.2.3.4"), netip.MustParseAddr("fe80::1%eth0"), {}} {
		j, _ := json.Marshal(a)
		if got := string(appendCanonical(nil, a)); got != string(j) {
			t.Errorf("%v: got %s, want %s", a, got, j)
		}
	}
}
