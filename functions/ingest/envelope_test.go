package ingest

import (
	"encoding/base64"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestDecodePush(t *testing.T) {
	data := `{"a":1}`
	enc := base64.StdEncoding.EncodeToString([]byte(data))
	tests := []struct {
		name    string
		body    string
		hdr     map[string]string
		want    message // compared field by field; bad only by reason
		reason  string  // want a bad delivery with this reason
		inWhy   string  // and this in its detail
		rawData bool    // want the body itself as data
	}{
		{name: "wrapped, proto spelling", body: `{"message":{"data":"` + enc + `","messageId":"1","publishTime":"2026-01-02T03:04:05.123Z","attributes":{"tenant":"t","k":"v"}},"subscription":"projects/p/subscriptions/s","deliveryAttempt":3}`,
			want: message{ID: "1", PublishTime: time.Date(2026, 1, 2, 3, 4, 5, 123e6, time.UTC), Attributes: map[string]string{"tenant": "t", "k": "v"}, Subscription: "projects/p/subscriptions/s", DeliveryAttempt: 3, Data: []byte(data)}},
		{name: "wrapped, legacy spelling", body: `{"message":{"data":"` + enc + `","message_id":"2","publish_time":"2026-01-02T03:04:05Z"}}`,
			want: message{ID: "2", PublishTime: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Data: []byte(data)}},
		{name: "proto spelling wins over legacy", body: `{"message":{"data":"` + enc + `","message_id":"legacy","messageId":"proto"}}`,
			want: message{ID: "proto", Data: []byte(data)}},
		{name: "unpadded and URL-safe base64", body: `{"message":{"data":"` + base64.RawURLEncoding.EncodeToString([]byte("\xfb\xff?")) + `"}}`,
			want: message{Data: []byte("\xfb\xff?")}},
		{name: "nulls are absent", body: `{"message":{"data":"` + enc + `","messageId":null,"attributes":null},"subscription":null,"deliveryAttempt":null}`,
			want: message{Data: []byte(data)}},
		{name: "odd deliveryAttempt is ignored", body: `{"message":{"data":"` + enc + `"},"deliveryAttempt":"x"}`,
			want: message{Data: []byte(data)}},
		{name: "escapes in metadata", body: `{"message":{"data":"` + enc + `","messageId":"a\"b\u00e9","attributes":{"k\n":"\u2603"}}}`,
			want: message{ID: `a"bé`, Attributes: map[string]string{"k\n": "☃"}, Data: []byte(data)}},
		{name: "NUL and invalid UTF-8 are cleaned from metadata", body: "{\"message\":{\"data\":\"" + enc + "\",\"messageId\":\"a\\u0000b\",\"attributes\":{\"k\":\"v\\u0000\"}},\"subscription\":\"s\xff\"}",
			want: message{ID: "ab", Attributes: map[string]string{"k": "v"}, Subscription: "s\uFFFD", Data: []byte(data)}},
		{name: "unwrapped", body: data, hdr: map[string]string{hdrMessageID: "9\xff", hdrSubscription: "s", hdrPublishTime: "2026-01-02T03:04:05Z", "tenant": "t"},
			want: message{ID: "9\uFFFD", Subscription: "s", PublishTime: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Attributes: map[string]string{"tenant": "t"}, Data: []byte(data)}},
		{name: "record posted directly", body: data, rawData: true},
		{name: "array posted directly", body: `[` + data + `,` + data + `]`, rawData: true},
		{name: "message null: not an envelope", body: `{"message":null,"x":1}`, rawData: true},
		{name: "not JSON", body: `{"message":`, reason: ReasonBadEnvelope, inWhy: "not valid JSON"},
		{name: "control character in a string", body: "{\"message\":{\"data\":\"" + enc + "\",\"messageId\":\"a\tb\"}}", reason: ReasonBadEnvelope, inWhy: "not valid JSON"},
		{name: "two JSON values", body: data + "\n" + data, reason: ReasonBadEnvelope, inWhy: "not valid JSON"},
		{name: "message not an object", body: `{"message":"hi"}`, reason: ReasonBadEnvelope, inWhy: "message is a JSON string"},
		{name: "data missing", body: `{"message":{"messageId":"1"}}`, reason: ReasonBadEnvelope, inWhy: "message.data is missing"},
		{name: "data null", body: `{"message":{"data":null}}`, reason: ReasonBadEnvelope, inWhy: "message.data is missing"},
		{name: "data a number", body: `{"message":{"data":12}}`, reason: ReasonBadEnvelope, inWhy: "message.data is a JSON number"},
		{name: "data not base64", body: `{"message":{"data":"!!!"}}`, reason: ReasonBadBase64, inWhy: "not base64"},
		{name: "messageId an object", body: `{"message":{"data":"` + enc + `","messageId":{}}}`, reason: ReasonBadEnvelope, inWhy: "message.messageId is a JSON object"},
		{name: "attributes an array", body: `{"message":{"data":"` + enc + `","attributes":[]}}`, reason: ReasonBadEnvelope, inWhy: "message.attributes is a JSON array"},
		{name: "attribute not a string", body: `{"message":{"data":"` + enc + `","attributes":{"n":1}}}`, reason: ReasonBadEnvelope, inWhy: "message.attributes.n is not a string"},
		{name: "nested too deep", body: strings.Repeat("[", 1<<20), reason: ReasonBadEnvelope, inWhy: "not valid JSON"},
		{name: "bad escape quoting NUL and invalid UTF-8", body: "{\"a\":\"\\u1\x00\xff\"}", reason: ReasonBadEnvelope, inWhy: "not valid JSON"},
		{name: "publishTime not RFC 3339", body: `{"message":{"data":"` + enc + `","publishTime":"yesterday"}}`, reason: ReasonBadEnvelope, inWhy: "not RFC 3339: yesterday"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tt.hdr {
				h.Set(k, v)
			}
			m := decodePush(h, []byte(tt.body))
			switch {
			case tt.reason != "":
				if m.bad == nil || m.bad.Reason != tt.reason || !strings.Contains(m.bad.Detail, tt.inWhy) || string(m.bad.Raw) != tt.body {
					t.Fatalf("got %.300v, want a %s delivery saying %q with the body kept", m.bad, tt.reason, tt.inWhy)
				}
				if d := m.bad.Detail; !utf8.ValidString(d) || strings.IndexByte(d, 0) >= 0 || len(d) > 300 {
					t.Fatalf("detail %q is not short, storable text", d)
				}
			case m.bad != nil:
				t.Fatalf("bad delivery %+v", *m.bad)
			case tt.rawData:
				if string(m.Data) != tt.body || m.ID != "" {
					t.Fatalf("data %q id %q, want the body as data", m.Data, m.ID)
				}
			default:
				got := fmt.Sprintf("%q %v %v %q %d %q", m.ID, m.PublishTime, m.Attributes, m.Subscription, m.DeliveryAttempt, m.Data)
				want := fmt.Sprintf("%q %v %v %q %d %q", tt.want.ID, tt.want.PublishTime, tt.want.Attributes, tt.want.Subscription, tt.want.DeliveryAttempt, tt.want.Data)
				if got != want || !maps.Equal(m.Attributes, tt.want.Attributes) {
					t.Fatalf("decoded\n %s\nwant\n %s", got, want)
				}
			}
		})
	}
}

// Details quote input; a long one is cut on a character boundary.
func TestShortenKeepsUTF8(t *testing.T) {
	for _, s := range []string{"x" + strings.Repeat("é", 150), strings.Repeat("☃", 100), "a\x00b\xff"} {
		got := shorten(s)
		if !utf8.ValidString(got) || strings.IndexByte(got, 0) >= 0 || len(got) > 230 {
			t.Errorf("shorten(%.20q…) = %q", s, got)
		}
	}
}

// The decoder's strings must not alias the pooled parser's buffer, which
// the next delivery overwrites.
func TestDecodedMetadataOutlivesTheParser(t *testing.T) {
	enc := base64.StdEncoding.EncodeToString([]byte(`{}`))
	first := decodePush(http.Header{}, []byte(`{"message":{"data":"`+enc+`","messageId":"first-id","attributes":{"tenant":"first"}},"subscription":"first-sub"}`))
	for range 10 {
		decodePush(http.Header{}, []byte(`{"message":{"data":"`+enc+`","messageId":"XXXXXXXX","attributes":{"tenant":"XXXXX"}},"subscription":"XXXXXXXXX"}`))
	}
	if first.ID != "first-id" || first.Attributes["tenant"] != "first" || first.Subscription != "first-sub" {
		t.Fatalf("metadata changed under a later delivery: %+v", first)
	}
}

func BenchmarkDecodePush(b *testing.B) {
	body := []byte(wrapped("1234567890", rec("r", time.Now()), map[string]string{"tenant": "t", "organization": "o"}))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if m := decodePush(http.Header{}, body); m.bad != nil {
			b.Fatal(m.bad.Detail)
		}
	}
}
