package ingest

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// message is one Pub/Sub message as delivered, whatever the delivery form.
type message struct {
	ID              string
	PublishTime     time.Time
	Attributes      map[string]string
	Subscription    string
	DeliveryAttempt int
	Data            []byte
	// bad is set when the delivery itself is malformed; Data is then empty
	// and the raw body is quarantined with bad's reason.
	bad *badDelivery
}

type badDelivery struct {
	Reason, Detail string
	Raw            []byte
}

// Reasons for deliveries that are not even a readable Pub/Sub message.
const (
	ReasonBadEnvelope      = "bad_envelope"
	ReasonBadBase64        = "bad_base64"
	ReasonDeliveryTooLarge = "delivery_too_large"
)

// pushEnvelope is Pub/Sub's wrapped push body; both spellings of the ids
// and times appear in the wild (the JSON mapping of the proto and the
// legacy field names), so both are read.
type pushEnvelope struct {
	Message *struct {
		Data         *string           `json:"data"`
		Attributes   map[string]string `json:"attributes"`
		MessageID    string            `json:"messageId"`
		MessageID2   string            `json:"message_id"`
		PublishTime  string            `json:"publishTime"`
		PublishTime2 string            `json:"publish_time"`
	} `json:"message"`
	Subscription    string `json:"subscription"`
	DeliveryAttempt *int   `json:"deliveryAttempt"`
}

// decodeWrapped reads a wrapped push envelope (also the data of an Eventarc
// CloudEvent). isEnvelope is false when body is JSON but not an envelope.
func decodeWrapped(body []byte) (m message, isEnvelope bool) {
	var env pushEnvelope
	if err := json.Unmarshal(body, &env); err != nil {
		return message{bad: &badDelivery{ReasonBadEnvelope, "push envelope is not valid JSON: " + shorten(err.Error()), body}}, true
	}
	if env.Message == nil {
		return message{}, false
	}
	em := env.Message
	m = message{
		ID:           first(em.MessageID, em.MessageID2),
		Attributes:   em.Attributes,
		Subscription: env.Subscription,
	}
	if env.DeliveryAttempt != nil {
		m.DeliveryAttempt = *env.DeliveryAttempt
	}
	if pt := first(em.PublishTime, em.PublishTime2); pt != "" {
		t, err := time.Parse(time.RFC3339Nano, pt)
		if err != nil {
			m.bad = &badDelivery{ReasonBadEnvelope, "message.publishTime is not RFC 3339: " + shorten(pt), body}
			return m, true
		}
		m.PublishTime = t.UTC()
	}
	if em.Data == nil {
		m.bad = &badDelivery{ReasonBadEnvelope, "message.data is missing", body}
		return m, true
	}
	data, err := decodeBase64(*em.Data)
	if err != nil {
		m.bad = &badDelivery{ReasonBadBase64, "message.data is not base64: " + shorten(err.Error()), body}
		return m, true
	}
	m.Data = data
	return m, true
}

// decodeBase64 accepts standard base64, padded or not, which is what
// Pub/Sub sends; URL-safe input is accepted too rather than quarantined.
func decodeBase64(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		return base64.RawURLEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
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
		ID:           h.Get(hdrMessageID),
		Subscription: h.Get(hdrSubscription),
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
			m.Attributes[k] = v
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
// table's detail column and the logs.
func shorten(s string) string {
	const max = 200
	if len(s) <= max {
		return s
	}
	return s[:max] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}
