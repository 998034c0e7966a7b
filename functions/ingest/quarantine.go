package ingest

// The quarantine: every stage that refuses input (the envelope decoder, the
// record validator, the database) turns it into a Reject through one
// constructor, so every row of apigee.ingest_rejects is keyed, dated and
// attributed to a tenant the same way.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"apigee-timescale/shared/privacy"
	"apigee-timescale/shared/record"
)

// Reasons for input refused outside the record validator (whose reasons are
// record.Reason*). They are stable: dashboards and quarantine tooling key on
// them.
const (
	// ReasonBadEnvelope, ReasonBadBase64 and ReasonDeliveryTooLarge mark
	// deliveries that are not even a readable Pub/Sub message.
	ReasonBadEnvelope      = "bad_envelope"
	ReasonBadBase64        = "bad_base64"
	ReasonDeliveryTooLarge = "delivery_too_large"
	// ReasonDBRejected marks records that passed validation but that the
	// database refused (a constraint the validator does not know about).
	ReasonDBRejected = "db_rejected"
)

// dbDetailBytes bounds the database's error text kept as a reject's detail.
const dbDetailBytes = 300

// Reject is one piece of input that failed validation, kept with its reason.
// Only source.reject makes them.
type Reject struct {
	// ReceivedAt is the message's publish time when known (stable across
	// redeliveries), else when ingest saw it.
	ReceivedAt time.Time
	// DedupeKey identifies the input across redeliveries; see
	// source.dedupeKey.
	DedupeKey       string
	Tenant          string
	Reason          string
	Field           string
	Detail          string
	RecordIndex     int
	Payload         []byte
	PubSubMessageID string
	Subscription    string
	PublishTime     time.Time
	Attributes      map[string]string
}

// source is what the rejects of one delivery share: the Pub/Sub metadata of
// its message, taken once when the delivery arrives, so a reject made later
// by the batch stage is keyed and dated like the ones made on arrival.
type source struct {
	messageID    string
	subscription string
	publishTime  time.Time
	attributes   map[string]string
	receivedAt   time.Time
}

// sourceOf takes m's metadata; arrived dates rejects of a message without a
// publish time.
func sourceOf(m *message, arrived time.Time) source {
	at := m.PublishTime
	if at.IsZero() {
		at = arrived.UTC()
	}
	return source{
		messageID:    m.ID,
		subscription: m.Subscription,
		publishTime:  m.PublishTime,
		attributes:   m.Attributes,
		receivedAt:   at,
	}
}

// reject builds the quarantine row for r (Index -1: the whole delivery).
// tenant, when set, is the record's own; otherwise the message's attributes
// decide. Text is not cleaned again here: the envelope decoder makes the
// message's metadata storable, the record package its details, and
// dbRejected the database's message.
func (src *source) reject(r record.Reject, tenant string) Reject {
	if tenant == "" {
		tenant = rejectTenant(src.attributes)
	}
	return Reject{
		ReceivedAt:      src.receivedAt,
		DedupeKey:       src.dedupeKey(r.Index, r.Raw),
		Tenant:          tenant,
		Reason:          r.Reason,
		Field:           r.Field,
		Detail:          r.Detail,
		RecordIndex:     r.Index,
		Payload:         r.Raw,
		PubSubMessageID: src.messageID,
		Subscription:    src.subscription,
		PublishTime:     src.publishTime,
		Attributes:      src.attributes,
	}
}

// dedupeKey identifies a reject across redeliveries: Pub/Sub keeps the
// message id, so "msg:<id>:<index>" does, the index being the record's
// position in the message (-1 for the whole message). A delivery without an
// id falls back to "sha256:<hash of the rejected bytes>:<index>".
func (src *source) dedupeKey(index int, raw []byte) string {
	idx := strconv.Itoa(index)
	if src.messageID != "" {
		return "msg:" + src.messageID + ":" + idx
	}
	sum := sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(sum[:]) + ":" + idx
}

// private applies the privacy policy to a reject of refused input, under
// the key of the tenant it is filed under. A record's bytes are rewritten
// as its row would be (privacy.Payload); a delivery refused before its
// records were read (envelope) carries them base64-encoded, where no
// personal field can be found, so it is withheld whole and its detail
// keeps only ingest's own sentence, not the input it quotes. A detail
// about a personal field quotes its value, so it is replaced.
//
// The dedupe key of input without a message id is a hash of the bytes:
// with a key it is taken again over what is kept (which holds a keyed
// digest of the rest); without one it stays the SHA-256 of the input,
// since the length alone would merge distinct deliveries.
func (src *source) private(p *privacy.Pseudonymiser, rj Reject, envelope bool) Reject {
	if !p.Active() {
		return rj
	}
	if envelope {
		rj.Payload = p.Withhold(rj.Tenant, rj.Payload)
		rj.Detail, _, _ = strings.Cut(rj.Detail, ": ")
	} else {
		rj.Payload = p.Payload(rj.Tenant, rj.Payload)
	}
	if p.Policy().Mode(rj.Field) != privacy.Keep {
		rj.Detail = rj.Field + " is not valid (its value is withheld: personal data, " + privacy.EnvPrivacy + ")"
	}
	if src.messageID == "" && p.Keys() != nil {
		rj.DedupeKey = src.dedupeKey(rj.RecordIndex, rj.Payload)
	}
	return rj
}

// dbRejected quarantines a call the database refused, with the database's
// reason; the payload is the normalised record, since the raw bytes are not
// kept per call (already pseudonymised: it is the row ingest tried to
// store).
func (src *source) dbRejected(c *Call, cause error) Reject {
	payload, _ := json.Marshal(c.Record) // a Record always marshals
	return src.reject(record.Reject{
		Index:  c.index,
		Reason: ReasonDBRejected,
		Detail: record.Clip(cause.Error(), dbDetailBytes),
		Raw:    payload,
	}, c.Tenant)
}

// rejectTenant picks the tenant a reject is visible to: the message's
// tenant or organization attribute (the Apigee shared flow sets them).
func rejectTenant(attrs map[string]string) string {
	if t := attrs["tenant"]; t != "" {
		return t
	}
	if o := attrs["organization"]; o != "" {
		return o
	}
	return "unknown"
}
