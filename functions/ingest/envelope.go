package ingest

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"strconv"
	"time"

	"github.com/valyala/fastjson"

	"apigee-timescale/shared/record"
)

// message is one Pub/Sub message as delivered, whatever the delivery form.
type message struct {
	ID              string
	PublishTime     time.Time
	Attributes      map[string]string
	Subscription    string
	DeliveryAttempt int
	Data            []byte
	// bad is set when the delivery itself is malformed: Data is then empty
	// and the raw body is quarantined whole (Index -1) with bad's reason.
	// The text fields above are storable (see metaString) whatever the
	// input, as the stored calls and rejects need them to be.
	bad *record.Reject
}

// refuse marks m as a malformed delivery whose raw bytes are quarantined.
func (m *message) refuse(reason, detail string, raw []byte) {
	m.bad = &record.Reject{Index: -1, Reason: reason, Detail: detail, Raw: raw}
}

// envelopeParsers decode wrapped push envelopes: fastjson reads one in about
// 5 µs and 9 allocations, where encoding/json's reflective Unmarshal took
// 14.6 µs and 23 (go test -bench DecodePush ./functions/ingest/; the README's
// benchmark section has the same figures).
var envelopeParsers fastjson.ParserPool

// decodeWrapped reads a wrapped push envelope (also the data of an Eventarc
// CloudEvent): {"message":{"data","attributes","messageId","publishTime"},
// "subscription","deliveryAttempt"}, with both spellings of the ids and
// times that appear in the wild (the JSON mapping of the proto and the
// legacy field names). isEnvelope is false when body is JSON but has no
// message object: such a body is records posted directly.
func decodeWrapped(body []byte) (m message, isEnvelope bool) {
	p := envelopeParsers.Get()
	defer envelopeParsers.Put(p)
	// The parser bounds nesting depth (fastjson.MaxDepth) but is lenient about
	// escapes and control characters; the validator is strict but unbounded
	// (a body of a million '[' takes minutes, then overflows the stack), so
	// it runs only on what the parser accepted.
	env, err := p.ParseBytes(body)
	if err == nil {
		err = fastjson.ValidateBytes(body)
	}
	if err != nil {
		m.refuse(ReasonBadEnvelope, "push envelope is not valid JSON: "+shorten(err.Error()), body)
		return m, true
	}
	if env.Type() != fastjson.TypeObject {
		return message{}, false
	}
	em := env.Get("message")
	if em == nil || em.Type() == fastjson.TypeNull {
		return message{}, false
	}
	if em.Type() != fastjson.TypeObject {
		m.refuse(ReasonBadEnvelope, "message is a JSON "+em.Type().String()+", not an object", body)
		return m, true
	}
	if m.readMetadata(env, em, body) {
		m.readData(em.Get("data"), body)
	}
	return m, true
}

// readMetadata reads the envelope's ids, subscription, delivery attempt,
// attributes and publish time; false (with m.bad set) when one has the
// wrong type. Strings point into the pooled parser's buffer: every one kept
// is copied (metaString does).
func (m *message) readMetadata(env, em *fastjson.Value, body []byte) bool {
	ok := true
	str := func(v *fastjson.Value, name string) string {
		s, good := metaString(v)
		if !good && ok {
			ok = false
			m.refuse(ReasonBadEnvelope, name+" is a JSON "+v.Type().String()+", not a string", body)
		}
		return s
	}
	// Fields are read in this order, and the first bad one is reported.
	id := str(em.Get("messageId"), "message.messageId")
	if !ok {
		return false
	}
	id2 := str(em.Get("message_id"), "message.message_id")
	if !ok {
		return false
	}
	m.ID = first(id, id2)
	if m.Subscription = str(env.Get("subscription"), "subscription"); !ok {
		return false
	}
	if a := env.Get("deliveryAttempt"); a != nil {
		// Informational only: an odd value is ignored rather than holding a
		// valid message hostage.
		if n, err := a.Int(); err == nil {
			m.DeliveryAttempt = n
		}
	}
	if !m.readAttributes(em.Get("attributes"), body) {
		return false
	}
	pt := str(em.Get("publishTime"), "message.publishTime")
	if !ok {
		return false
	}
	pt2 := str(em.Get("publish_time"), "message.publish_time")
	if !ok {
		return false
	}
	if pt = first(pt, pt2); pt != "" {
		at, err := time.Parse(time.RFC3339Nano, pt)
		if err != nil {
			m.refuse(ReasonBadEnvelope, "message.publishTime is not RFC 3339: "+shorten(pt), body)
			return false
		}
		m.PublishTime = at.UTC()
	}
	return true
}

func (m *message) readAttributes(attrs *fastjson.Value, body []byte) bool {
	if attrs == nil || attrs.Type() == fastjson.TypeNull {
		return true
	}
	o, err := attrs.Object()
	if err != nil {
		m.refuse(ReasonBadEnvelope, "message.attributes is a JSON "+attrs.Type().String()+", not an object", body)
		return false
	}
	m.Attributes = make(map[string]string, o.Len())
	var badKey string
	o.Visit(func(k []byte, v *fastjson.Value) {
		s, good := metaString(v)
		if !good && badKey == "" {
			badKey = record.Storable(string(k))
		}
		m.Attributes[record.Storable(string(k))] = s
	})
	if badKey != "" {
		m.refuse(ReasonBadEnvelope, "message.attributes."+shorten(badKey)+" is not a string", body)
		return false
	}
	return true
}

func (m *message) readData(data *fastjson.Value, body []byte) {
	if data == nil || data.Type() == fastjson.TypeNull {
		m.refuse(ReasonBadEnvelope, "message.data is missing", body)
		return
	}
	b64, err := data.StringBytes()
	if err != nil {
		m.refuse(ReasonBadEnvelope, "message.data is a JSON "+data.Type().String()+", not a string", body)
		return
	}
	if m.Data, err = decodeBase64(b64); err != nil {
		m.refuse(ReasonBadBase64, "message.data is not base64: "+shorten(err.Error()), body)
	}
}

// metaString reads an optional string field: absent and null are "", any
// other non-string is not good. The result is a copy, and storable: a message
// id PostgreSQL refuses would fail its batch on every redelivery.
func metaString(v *fastjson.Value) (s string, good bool) {
	if v == nil || v.Type() == fastjson.TypeNull {
		return "", true
	}
	b, err := v.StringBytes()
	if err != nil {
		return "", false
	}
	return record.Storable(string(b)), true
}

// decodeBase64 accepts standard base64, padded or not, which is what
// Pub/Sub sends; URL-safe input is accepted too rather than quarantined.
func decodeBase64(s []byte) ([]byte, error) {
	// What Pub/Sub sends, padded standard base64 without line breaks, is
	// decoded as it is; it decodes to the same bytes below, and anything
	// else (line breaks, which the decoder skips even inside the padding,
	// no padding, URL-safe, not base64) is left to lenientBase64, so what
	// is accepted and every error are as they were.
	if len(s)%4 == 0 && bytes.IndexByte(s, '\n') < 0 && bytes.IndexByte(s, '\r') < 0 {
		out := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
		if n, err := base64.StdEncoding.Decode(out, s); err == nil {
			return out[:n], nil
		}
	}
	return lenientBase64(s)
}

// lenientBase64 decodes standard or URL-safe base64, padded or not.
func lenientBase64(s []byte) ([]byte, error) {
	s = bytes.TrimRight(s, "=")
	enc := base64.RawStdEncoding
	if bytes.ContainsAny(s, "-_") {
		enc = base64.RawURLEncoding
	}
	out := make([]byte, enc.DecodedLen(len(s)))
	n, err := enc.Decode(out, s)
	return out[:n], err
}

// Headers of unwrapped push deliveries (--push-no-wrapper-write-metadata).
const (
	hdrMessageID    = "X-Goog-Pubsub-Message-Id"
	hdrSubscription = "X-Goog-Pubsub-Subscription-Name"
	hdrPublishTime  = "X-Goog-Pubsub-Publish-Time"
)

// decodePush turns an HTTP push delivery into a message: unwrapped when
// Pub/Sub's metadata headers are present, else the wrapped envelope; a JSON
// body that is not an envelope is taken as the data itself (a shipper
// posting records directly).
func decodePush(h http.Header, body []byte) message {
	if h.Get(hdrMessageID) != "" || h.Get(hdrSubscription) != "" {
		return decodeUnwrapped(h, body)
	}
	if m, ok := decodeWrapped(body); ok {
		return m
	}
	return message{Data: body}
}

func decodeUnwrapped(h http.Header, body []byte) message {
	m := message{
		ID:           record.Storable(h.Get(hdrMessageID)),
		Subscription: record.Storable(h.Get(hdrSubscription)),
		Data:         body,
	}
	if pt := h.Get(hdrPublishTime); pt != "" {
		if t, err := time.Parse(time.RFC3339Nano, pt); err == nil {
			m.PublishTime = t.UTC()
		}
	}
	// Unwrapped delivery turns attributes into headers; only the ones the
	// record path uses are read back.
	for _, k := range []string{"schema", "organization", "environment", "apiproxy", "tenant"} {
		if v := h.Get(k); v != "" {
			if m.Attributes == nil {
				m.Attributes = map[string]string{}
			}
			m.Attributes[k] = record.Storable(v)
		}
	}
	return m
}

func first(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// shorten keeps error details from echoing large inputs into the quarantine
// table's detail column and the logs. Details quote input (the parser's
// errors include raw bytes), so they are made storable too.
func shorten(s string) string {
	const max = 200
	if len(s) <= max {
		return record.Storable(s)
	}
	return record.Clip(s, max) + "…(" + strconv.Itoa(len(s)) + " bytes)"
}
