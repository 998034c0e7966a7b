package record

import (
	"cmp"
	"encoding/json"
	"math"
	"net/netip"
	"slices"
	"time"
)

// Kind says how a field is decoded, validated and stored.
type Kind uint8

// Kinds. Most are shared by several fields; a few (verb, path, ...) name
// the one field whose rule they implement.
const (
	KindSchema     Kind = iota // the constant SchemaV1
	KindText                   // a string; optional ones treat null and "" as absent
	KindMessageID              // text without control characters
	KindTime                   // RFC 3339 or epoch milliseconds
	KindInt                    // a non-negative integer, or a string of digits, at most Max
	KindVerb                   // letters only, upper-cased
	KindPath                   // the query string is stripped
	KindIP                     // an IPv4 or IPv6 address
	KindUserAgent              // any string, made storable and truncated, never rejected
	KindBool                   // true, false, "true" or "false"
	KindObject                 // an object whose members are the fields below it
	KindAuth                   // one of oauth2, jwt, apikey, none
	KindScopes                 // an array of strings or one space-delimited string
	KindAttributes             // an object of strings, at most Max keys
	KindExtra                  // the unknown top-level fields, kept as they came
)

// Field is one field of the apigee.call.v1 record and the column that
// stores it. The table of them, fields, is the one place the record format
// is written down: the decoder, the columns ingest writes (and their order
// in the canonical hash), FORMAT.md, and the tests that hold the migration,
// the JSON Schema and the Apigee template to it all read it.
type Field struct {
	Key      string // JSON key; "identity.subject" for a member of identity; "" for the unknown fields
	Name     string // the Record field that holds it
	Kind     Kind
	Max      int  // text: the most UTF-8 bytes (0: no limit); integers: the largest value; attributes: the most keys
	Required bool // a record without it is rejected (missing_field)
	Default  string
	Personal bool   // personal data (GDPR): who called, or from where
	Column   string // column of apigee.api_calls; "" when not stored
	Ordinal  int    // the column's position in apigee.api_calls: the COPY and canonical hash order
	// Added is the revision of the format that added the field (0: the
	// first). A column added later is hashed only when set, after the
	// first revision's columns (shared/audit), so rows stored before it
	// still hash as they did.
	Added   int
	SQLType string
	Apigee  string // the flow variable the shared flow fills it from; "" when the template leaves it out
	Doc     string // one sentence for FORMAT.md

	intern bool              // the value repeats across the records of one message
	ref    func(*Record) any // a pointer to the Record field
}

// Limits of apigee.call.v1 that are not per field.
const (
	maxExtraDepth    = 64
	maxExtraNumber   = 256  // characters of one number in an unknown field
	maxExtraExponent = 1000 // |exponent| of such a number
	snippetBytes     = 64
)

// fields lists the record's fields in the order they are validated: a
// record with several problems is rejected for the first, so the same
// input always gets the same Reject. Members of identity follow it.
var fields = [...]Field{
	{Key: "schema", Kind: KindSchema, Required: true,
		Doc: "Record format and version; always apigee.call.v1. Other versions are quarantined (unknown_schema)."},
	{Key: "message_id", Name: "MessageID", Kind: KindMessageID, Max: 128, Required: true,
		Column: "message_id", Ordinal: 2, SQLType: "text", Apigee: "messageid",
		Doc: "Unique per API call; with received_at the key that makes a redelivered record a duplicate.",
		ref: func(r *Record) any { return &r.MessageID }},
	{Key: "received_at", Name: "ReceivedAt", Kind: KindTime, Required: true,
		Column: "received_at", Ordinal: 1, SQLType: "timestamptz", Apigee: "client.received.start.timestamp",
		Doc: "When Apigee received the request: RFC 3339 with any offset, or epoch milliseconds. Stored in UTC, truncated to milliseconds.",
		ref: func(r *Record) any { return &r.ReceivedAt }},
	{Key: "organization", Name: "Organization", Kind: KindText, Max: 128, Required: true, intern: true,
		Column: "organization", Ordinal: 4, SQLType: "text", Apigee: "organization.name",
		ref: func(r *Record) any { return &r.Organization }},
	{Key: "environment", Name: "Environment", Kind: KindText, Max: 128, Required: true, intern: true,
		Column: "environment", Ordinal: 5, SQLType: "text", Apigee: "environment.name",
		ref: func(r *Record) any { return &r.Environment }},
	{Key: "apiproxy", Name: "APIProxy", Kind: KindText, Max: 255, Required: true, intern: true,
		Column: "apiproxy", Ordinal: 6, SQLType: "text", Apigee: "apiproxy.name",
		ref: func(r *Record) any { return &r.APIProxy }},
	{Key: "apiproxy_revision", Name: "APIProxyRevision", Kind: KindInt, Max: math.MaxInt32,
		Column: "apiproxy_revision", Ordinal: 7, SQLType: "integer", Apigee: "apiproxy.revision",
		ref: func(r *Record) any { return &r.APIProxyRevision }},
	{Key: "proxy_basepath", Name: "ProxyBasepath", Kind: KindText, Max: 1024, intern: true,
		Column: "proxy_basepath", Ordinal: 8, SQLType: "text", Apigee: "proxy.basepath",
		ref: func(r *Record) any { return &r.ProxyBasepath }},
	{Key: "request_verb", Name: "RequestVerb", Kind: KindVerb, Max: 32, Required: true,
		Column: "request_verb", Ordinal: 9, SQLType: "text", Apigee: "request.verb",
		Doc: "HTTP method; stored upper-cased.",
		ref: func(r *Record) any { return &r.RequestVerb }},
	{Key: "request_path", Name: "RequestPath", Kind: KindPath, Max: 2048, Required: true,
		Column: "request_path", Ordinal: 10, SQLType: "text", Apigee: "request.path",
		Doc: "A query string is stripped (it may hold tokens or personal data); the limit applies to what is left, which must not be empty.",
		ref: func(r *Record) any { return &r.RequestPath }},
	{Key: "response_status_code", Name: "ResponseStatusCode", Kind: KindInt, Max: 599, Required: true,
		Column: "response_status_code", Ordinal: 11, SQLType: "smallint", Apigee: "response.status.code",
		Doc: "HTTP status sent to the client; 0 when none was sent.",
		ref: func(r *Record) any { return &r.ResponseStatusCode }},
	{Key: "target_response_code", Name: "TargetResponseCode", Kind: KindInt, Max: 599,
		Column: "target_response_code", Ordinal: 12, SQLType: "smallint", Apigee: "timescale.target_response_code",
		Doc: "HTTP status the target answered: response.status.code as it stands at the PostTargetFlowHook, before the proxy may change it; absent in a no-target proxy.",
		ref: func(r *Record) any { return &r.TargetResponseCode }},
	{Key: "total_response_time", Name: "TotalResponseTime", Kind: KindInt, Max: math.MaxInt32,
		Column: "total_response_time", Ordinal: 13, SQLType: "integer", Apigee: "timescale.total_response_time",
		Doc: "Milliseconds from request received to response sent.",
		ref: func(r *Record) any { return &r.TotalResponseTime }},
	{Key: "target_response_time", Name: "TargetResponseTime", Kind: KindInt, Max: math.MaxInt32,
		Column: "target_response_time", Ordinal: 14, SQLType: "integer", Apigee: "timescale.target_response_time",
		Doc: "Milliseconds the target took.",
		ref: func(r *Record) any { return &r.TargetResponseTime }},
	{Key: "request_size", Name: "RequestSize", Kind: KindInt, Max: math.MaxInt64,
		Column: "request_size", Ordinal: 15, SQLType: "bigint", Apigee: "request.header.Content-Length",
		Doc: "Bytes.",
		ref: func(r *Record) any { return &r.RequestSize }},
	{Key: "response_size", Name: "ResponseSize", Kind: KindInt, Max: math.MaxInt64,
		Column: "response_size", Ordinal: 16, SQLType: "bigint", Apigee: "response.header.Content-Length",
		Doc: "Bytes.",
		ref: func(r *Record) any { return &r.ResponseSize }},
	{Key: "client_ip", Name: "ClientIP", Kind: KindIP, Personal: true,
		Column: "client_ip", Ordinal: 17, SQLType: "inet", Apigee: "client.ip",
		Doc: "No zone; an IPv4-mapped IPv6 address is stored as IPv4. On Apigee X, the address that connected to the load balancer.",
		ref: func(r *Record) any { return &r.ClientIP }},
	{Key: "forwarded_client_ip", Name: "ForwardedClientIP", Kind: KindIP, Personal: true, Added: 2,
		Column: "forwarded_client_ip", Ordinal: 37, SQLType: "inet", Apigee: "timescale.forwarded_client_ip",
		Doc: "The X-Forwarded-For entry at index timescale.in.xff_index (default 0, the first; -1 the last, as Apigee's client IP resolution counts), when it is an address; absent otherwise. Client-supplied entries can be forged: pick the index your load balancers make trustworthy.",
		ref: func(r *Record) any { return &r.ForwardedClientIP }},
	{Key: "useragent", Name: "UserAgent", Kind: KindUserAgent, Max: 512, intern: true,
		Column: "useragent", Ordinal: 18, SQLType: "text", Apigee: "request.header.User-Agent.values.string",
		Doc: "Never rejected, because the client controls it: NUL is dropped, invalid UTF-8 replaced by U+FFFD, and the value cut to the limit on a character boundary.",
		ref: func(r *Record) any { return &r.UserAgent }},
	{Key: "target_host", Name: "TargetHost", Kind: KindText, Max: 255, intern: true,
		Column: "target_host", Ordinal: 19, SQLType: "text", Apigee: "target.host",
		ref: func(r *Record) any { return &r.TargetHost }},
	{Key: "fault_name", Name: "FaultName", Kind: KindText, Max: 255, intern: true,
		Column: "fault_name", Ordinal: 20, SQLType: "text", Apigee: "fault.name",
		ref: func(r *Record) any { return &r.FaultName }},
	{Key: "is_error", Name: "IsError", Kind: KindBool,
		Column: "is_error", Ordinal: 21, SQLType: "boolean", Apigee: "is.error",
		ref: func(r *Record) any { return &r.IsError }},
	{Key: "developer_app", Name: "DeveloperApp", Kind: KindText, intern: true,
		Column: "developer_app", Ordinal: 22, SQLType: "text", Apigee: "timescale.developer_app",
		Doc: "developer.app.name (OAuth) or verifyapikey.VA-VerifyAPIKey.developer.app.name (API key).",
		ref: func(r *Record) any { return &r.DeveloperApp }},
	{Key: "developer_email", Name: "DeveloperEmail", Kind: KindText, Personal: true, intern: true,
		Column: "developer_email", Ordinal: 23, SQLType: "text", Apigee: "timescale.developer_email",
		Doc: "developer.email (OAuth) or verifyapikey.VA-VerifyAPIKey.developer.email (API key).",
		ref: func(r *Record) any { return &r.DeveloperEmail }},
	{Key: "api_product", Name: "APIProduct", Kind: KindText, intern: true,
		Column: "api_product", Ordinal: 24, SQLType: "text", Apigee: "timescale.api_product",
		Doc: "apiproduct.name (OAuth) or verifyapikey.VA-VerifyAPIKey.apiproduct.name (API key).",
		ref: func(r *Record) any { return &r.APIProduct }},
	{Key: "client_id", Name: "ClientID", Kind: KindText, intern: true,
		Column: "client_id", Ordinal: 25, SQLType: "text", Apigee: "timescale.client_id",
		Doc: "client_id (OAuth) or verifyapikey.VA-VerifyAPIKey.client_id (API key).",
		ref: func(r *Record) any { return &r.ClientID }},
	{Key: "tenant", Name: "Tenant", Kind: KindText, Max: 128, Default: "organization", intern: true,
		Column: "tenant", Ordinal: 3, SQLType: "text", Apigee: "timescale.tenant",
		Doc: "The row-level security key: who may read the row.",
		ref: func(r *Record) any { return &r.Tenant }},
	{Key: "identity", Name: "Identity", Kind: KindObject,
		Doc: "Who called, as VerifyJWT, OAuthV2 or VerifyAPIKey established it. Unknown members are ignored."},
	{Key: "identity.subject", Name: "Identity.Subject", Kind: KindText, Personal: true,
		Column: "identity_subject", Ordinal: 26, SQLType: "text", Apigee: "timescale.identity.subject",
		ref: func(r *Record) any { return &r.Identity.Subject }},
	{Key: "identity.issuer", Name: "Identity.Issuer", Kind: KindText, intern: true,
		Column: "identity_issuer", Ordinal: 27, SQLType: "text", Apigee: "timescale.identity.issuer",
		ref: func(r *Record) any { return &r.Identity.Issuer }},
	{Key: "identity.email", Name: "Identity.Email", Kind: KindText, Personal: true,
		Column: "identity_email", Ordinal: 28, SQLType: "text", Apigee: "timescale.identity.email",
		ref: func(r *Record) any { return &r.Identity.Email }},
	{Key: "identity.auth", Name: "Identity.Auth", Kind: KindAuth,
		Column: "identity_auth", Ordinal: 29, SQLType: "text", Apigee: "timescale.identity.auth",
		Doc: "How the caller was verified.",
		ref: func(r *Record) any { return &r.Identity.Auth }},
	{Key: "identity.scopes", Name: "Identity.Scopes", Kind: KindScopes,
		Column: "identity_scopes", Ordinal: 30, SQLType: "text[]", Apigee: "timescale.identity.scopes",
		Doc: "Granted OAuth scopes; empty scopes are dropped.",
		ref: func(r *Record) any { return &r.Identity.Scopes }},
	{Key: "attributes", Name: "Attributes", Kind: KindAttributes, Max: 32,
		Column: "attributes", Ordinal: 31, SQLType: "jsonb",
		Doc: "Custom attributes, string to string. An empty object is the same as absent.",
		ref: func(r *Record) any { return &r.Attributes }},
	{Name: "Extra", Kind: KindExtra,
		Column: "extra", Ordinal: 32, SQLType: "jsonb",
		Doc: "Any other top-level field is kept as it came, so a gateway can send a field before the database has a column for it.",
		ref: func(r *Record) any { return &r.Extra }},
}

// numFields sizes the per-record arrays of located values.
const numFields = len(fields)

// fieldID indexes fields.
type fieldID uint8

const fUnknown = fieldID(numFields)

// Fields returns a copy of the field table, in validation order.
func Fields() []Field { return slices.Clone(fields[:]) }

// Columns returns the fields that are stored, in the column order of
// apigee.api_calls, which is also the order of the canonical hash.
func Columns() []Field {
	var cols []Field
	for _, f := range fields {
		if f.Column != "" {
			cols = append(cols, f)
		}
	}
	slices.SortFunc(cols, func(a, b Field) int { return cmp.Compare(a.Ordinal, b.Ordinal) })
	return cols
}

// NotNull reports whether the field's column is NOT NULL: a required field,
// or one that takes another's value when absent.
func (f *Field) NotNull() bool { return f.Required || f.Default != "" }

// Value returns f's column value in r as COPY writes it and the canonical
// hash encodes it: a NOT NULL column as a plain value or a pointer into r,
// an absent optional one as nil (NULL), jsonb as its JSON text. Text and
// timestamps are pointers into r because boxing a string or a time.Time in
// an interface allocates: a row's values were most of what ingest
// allocated per row.
func (f *Field) Value(r *Record) any {
	switch x := f.ref(r).(type) {
	case *string:
		if !f.NotNull() && *x == "" {
			return (*string)(nil)
		}
		return x
	case *time.Time:
		return x
	case *int16:
		return *x
	case **int16:
		return *x
	case **int32:
		return *x
	case **int64:
		return *x
	case **bool:
		return *x
	case *netip.Addr:
		if !x.IsValid() {
			return nil
		}
		return *x
	case *[]string:
		if len(*x) == 0 {
			return []string(nil)
		}
		return *x
	case *map[string]string:
		return marshalNonEmpty(*x)
	case *map[string]json.RawMessage:
		return marshalNonEmpty(*x)
	}
	panic("record: field " + f.Key + " has no column value")
}

// marshalNonEmpty is the jsonb text of m: keys sorted, compact; nil (NULL)
// for an empty map. Extra holds raw JSON the decoder validated, so a failure
// is a bug, but losing the extra fields beats losing the row.
func marshalNonEmpty[V any](m map[string]V) []byte {
	if len(m) == 0 {
		return nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil
	}
	return b
}

// parentOf returns the object field a member belongs to (identity for
// identity.subject), -1 for a top-level field.
func parentOf(id fieldID) int {
	key := fields[id].Key
	for i := int(id) - 1; i >= 0; i-- {
		if p := fields[i].Key; fields[i].Kind == KindObject && len(key) > len(p) && key[:len(p)] == p && key[len(p)] == '.' {
			return i
		}
	}
	return -1
}
