package ingest

import (
	"bytes"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"apigee-timescale/shared/record"
)

// FuzzDecodePush: any body, with or without Pub/Sub's headers, decodes
// without panicking into either data or a quarantinable bad delivery, and
// what it decodes into is ingestible (every record stored or rejected, the
// metadata storable in PostgreSQL).
func FuzzDecodePush(f *testing.F) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Add([]byte(wrapped("m", rec("r", now), map[string]string{"tenant": "t"})), false)
	f.Add([]byte(rec("r", now)), true)
	f.Add([]byte(`{"message":{"data":"e30=","messageId":"1"}}`), false)
	f.Add([]byte(`{"message":{"data":"!!"}}`), false)
	f.Add([]byte(`{"message":null}`), false)
	f.Add([]byte(`[1,2,3]`), false)
	f.Add([]byte("{\"a\":\"\\u1\xff\xfe\"}"), false)
	f.Fuzz(func(t *testing.T, body []byte, unwrapped bool) {
		h := http.Header{}
		if unwrapped {
			h.Set(hdrMessageID, "1")
		}
		m := decodePush(h, body)
		for _, s := range append([]string{m.ID, m.Subscription}, slices.Concat(slices.Collect(maps.Keys(m.Attributes)), slices.Collect(maps.Values(m.Attributes)))...) {
			if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
				t.Fatalf("metadata %q cannot be stored in PostgreSQL", s)
			}
		}
		if m.bad != nil {
			if m.bad.Reason == "" || m.bad.Detail == "" {
				t.Fatalf("bad delivery without reason/detail: %+v", m.bad)
			}
			if d := m.bad.Detail; !utf8.ValidString(d) || strings.IndexByte(d, 0) >= 0 {
				t.Fatalf("detail %q cannot be stored in PostgreSQL", d)
			}
			return
		}
		p := record.Parse(m.Data, record.DefaultLimits())
		if len(m.Data) > 0 && len(p.Records)+len(p.Rejects) == 0 {
			t.Fatalf("data %q produced neither records nor rejects", m.Data)
		}
	})
}

// FuzzDecodeBase64: the fast path for padded standard base64 accepts and
// decodes exactly what the lenient decoder does.
func FuzzDecodeBase64(f *testing.F) {
	for _, s := range []string{"e30=", "e30", "QQ==", "QQ=\n=", "QUI=\r\n", "QUJD", "-_-_", "+/+/", "QQ==QQ==", "!!", "", "QR==", "QQ\n==", "QUJDQQ=\n=\n\n\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, s []byte) {
		got, gotErr := decodeBase64(s)
		want, wantErr := lenientBase64(s)
		if (gotErr == nil) != (wantErr == nil) || gotErr != nil && gotErr.Error() != wantErr.Error() || !bytes.Equal(got, want) {
			t.Fatalf("%q: decoded %q, %v; the lenient decoder %q, %v", s, got, gotErr, want, wantErr)
		}
	})
}
