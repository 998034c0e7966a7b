// Package record decodes, validates and normalises apigee.call.v1 records
// (FORMAT.md in this directory), the JSON objects Apigee publishes to
// Pub/Sub for every API call. The field table in table.go declares every
// field once. It is the hot path of ingest, so it scans the JSON itself
// instead of unmarshalling into maps; JSONSchema is the same contract in
// machine-readable form for other tools.
//
// Rules worth knowing: lengths are counted in UTF-8 bytes; a key that
// appears twice in an object is rejected (first-wins and last-wins parsers
// would disagree on, say, tenant); every string, unknown fields included,
// must be storable by PostgreSQL (valid UTF-8, no NUL, no lone surrogate);
// received_at before Limits.MinReceivedAt (2000) is rejected, which catches
// epoch seconds sent as milliseconds; identity.scopes may also be one
// space-delimited string, as Apigee's OAuth variables hold it; unknown
// members of identity are ignored. Parse and ParseRecord are safe for
// concurrent use.
package record

import (
	"encoding/json"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// SchemaV1 is the value of the "schema" field of every version 1 record.
const SchemaV1 = "apigee.call.v1"

// Identity is who called, as established by VerifyJWT / OAuthV2 in Apigee.
type Identity struct {
	Subject, Issuer, Email string
	Auth                   string // one of oauth2, jwt, apikey, none; "" when absent
	Scopes                 []string
}

// Record is one validated, normalised API call. An empty string, a nil
// pointer, a nil map and the zero netip.Addr all mean "absent" (NULL).
type Record struct {
	MessageID                           string
	ReceivedAt                          time.Time // UTC, millisecond precision
	Organization, Environment, APIProxy string
	APIProxyRevision                    *int32
	ProxyBasepath                       string
	RequestVerb                         string // upper-cased
	RequestPath                         string // query string stripped
	ResponseStatusCode                  int16  // 0..599
	TargetResponseCode                  *int16
	TotalResponseTime                   *int32 // ms
	TargetResponseTime                  *int32 // ms
	RequestSize, ResponseSize           *int64
	ClientIP                            netip.Addr // IPv4-mapped IPv6 is unmapped; never has a zone
	ForwardedClientIP                   netip.Addr // the X-Forwarded-For entry the shared flow picked; as ClientIP
	UserAgent                           string     // truncated to 512 bytes on a UTF-8 boundary
	TargetHost, FaultName               string
	IsError                             *bool
	DeveloperApp, DeveloperEmail        string
	APIProduct, ClientID                string
	Tenant                              string // defaults to Organization
	Identity                            Identity
	Attributes                          map[string]string          // nil when absent or empty
	Extra                               map[string]json.RawMessage // unknown top-level fields; nil when none
}

// Limits bound what Parse and ParseRecord accept. Zero fields take their
// defaults, so Limits{} behaves like DefaultLimits().
type Limits struct {
	// MaxRecordBytes is the largest record (or LogEntry carrying one); default 1 MiB.
	MaxRecordBytes int
	// MaxMessageBytes is the largest message; default 10,000,000 (Pub/Sub's own limit).
	MaxMessageBytes int
	// MaxRecords is the most records one message may carry; default 10,000.
	MaxRecords int
	// MaxFuture: received_at later than Now()+MaxFuture is rejected; default 1h.
	MaxFuture time.Duration
	// MinReceivedAt: earlier received_at is rejected; default 2000-01-01T00:00:00Z.
	// It catches epoch seconds sent where milliseconds are expected (1970 dates).
	MinReceivedAt time.Time
	// Now is the clock for MaxFuture; default time.Now.
	Now func() time.Time
}

// defaultMinReceivedAt: no Apigee call predates it; epoch seconds read as milliseconds (1970) do.
var defaultMinReceivedAt = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// DefaultLimits returns the limits FORMAT.md states.
func DefaultLimits() Limits {
	return Limits{
		MaxRecordBytes:  1 << 20,
		MaxMessageBytes: 10_000_000,
		MaxRecords:      10_000,
		MaxFuture:       time.Hour,
		MinReceivedAt:   defaultMinReceivedAt,
		Now:             time.Now,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxRecordBytes <= 0 {
		l.MaxRecordBytes = d.MaxRecordBytes
	}
	if l.MaxMessageBytes <= 0 {
		l.MaxMessageBytes = d.MaxMessageBytes
	}
	if l.MaxRecords <= 0 {
		l.MaxRecords = d.MaxRecords
	}
	if l.MaxFuture <= 0 {
		l.MaxFuture = d.MaxFuture
	}
	if l.MinReceivedAt.IsZero() {
		l.MinReceivedAt = d.MinReceivedAt
	}
	if l.Now == nil {
		l.Now = d.Now
	}
	return l
}

// Reject explains why a record (or a whole message) was not accepted. Rejects
// are meant for a quarantine: Raw is kept so the input can be replayed.
type Reject struct {
	Index  int    // position of the record in the message; -1 when the whole message is rejected
	Reason string // a stable code from the Reason* constants
	Field  string // offending field (JSON name, dotted for nested e.g. "identity.auth"), "" if none
	Detail string // one human sentence, never containing more than ~200 bytes of the input
	Raw    []byte // the offending record's bytes (the whole message when Index = -1); aliases the input
}

// Reject reasons. They are stable: dashboards and quarantine tooling key on them.
const (
	ReasonNotJSON         = "not_json"
	ReasonUnknownSchema   = "unknown_schema"
	ReasonMissingField    = "missing_field"
	ReasonInvalidField    = "invalid_field"
	ReasonRecordTooLarge  = "record_too_large"
	ReasonTooManyRecords  = "too_many_records"
	ReasonMessageTooLarge = "message_too_large"
	ReasonEmptyMessage    = "empty_message"
)

// Parsed is the outcome of one message: every record in it is either in
// Records or in Rejects.
type Parsed struct {
	Records []Record
	Rejects []Reject
}

var bom = []byte("\xef\xbb\xbf")

func trimBOM(b []byte) int {
	if len(b) >= 3 && b[0] == bom[0] && b[1] == bom[1] && b[2] == bom[2] {
		return 3
	}
	return 0
}

// ParseRecord validates one record: the bytes of a single JSON object, either
// the record itself or a Cloud Logging LogEntry whose jsonPayload is the
// record. A returned Reject has Index 0 and Raw = raw.
func ParseRecord(raw []byte, lim Limits) (Record, *Reject) {
	lim = lim.withDefaults()
	p := parser{lim: &lim, now: lim.Now()}
	i := skipWS(raw, trimBOM(raw))
	v, serr := p.scanItem(raw, i, 0)
	if serr == nil {
		if j := skipWS(raw, v.end); j < len(raw) {
			serr = unexpected(raw, j, "expected the end of the record")
		}
	}
	if serr != nil {
		return Record{}, &Reject{Reason: ReasonNotJSON, Detail: serr.Error(), Raw: raw}
	}
	// The same order of checks as Parse, so a quarantined record replays
	// to the same verdict.
	if len(raw) > lim.MaxRecordBytes {
		return Record{}, p.tooLarge(raw)
	}
	if v.kind != kindObject {
		return Record{}, notObject(raw, v)
	}
	var r Record
	p.startRecord(raw, val{start: 0, end: len(raw)})
	if rej := p.record(raw, &p.loc, true, &r); rej != nil {
		rej.Raw = raw
		return Record{}, rej
	}
	return r, nil
}

// scanItem validates the value at b[i]; an object's members are located in
// p.loc on the way.
func (p *parser) scanItem(b []byte, i, depth int) (val, *syntaxError) {
	if i < len(b) && b[i] == '{' {
		p.loc = located{}
		end, err := p.collect(b, i, depth, &p.loc)
		if err != nil {
			return val{}, err
		}
		return val{start: i, end: end, kind: kindObject}, nil
	}
	return scanValue(b, i, depth)
}

func notObject(raw []byte, v val) *Reject {
	return &Reject{Reason: ReasonNotJSON, Detail: "a record must be a JSON object, got " + v.kind.String(), Raw: raw}
}

// Parse splits one Pub/Sub message's data into records and validates each on
// its own. The data may be one JSON object, a JSON array of objects,
// newline-delimited (or simply concatenated) objects and arrays, and any
// object may be a Cloud Logging LogEntry whose jsonPayload is the record.
//
// Every record ends up in Records or in Rejects (with its Index, counted from
// 0 across the whole message). The whole message is rejected once, with
// Index -1, when it is empty, too large, holds more than MaxRecords records
// (a shipper bug: better quarantined whole than half stored) or is not JSON
// at all. A line that is not JSON is rejected on its own and parsing resumes
// at the next line that starts with '{' or '['.
func Parse(data []byte, lim Limits) Parsed {
	lim = lim.withDefaults()
	if len(data) > lim.MaxMessageBytes {
		return whole(data, ReasonMessageTooLarge, sprintf("the message is %d bytes, the limit is %d", len(data), lim.MaxMessageBytes))
	}
	s := splitters.Get().(*splitter)
	defer s.recycle()
	*s = splitter{p: parser{buf: s.p.buf[:0], unknown: s.p.unknown[:0], now: lim.Now()}, data: data, lim: lim}
	s.p.lim = &s.lim
	i := skipWS(data, trimBOM(data))
	if i == len(data) {
		return whole(data, ReasonEmptyMessage, "the message holds no records")
	}
	for i < len(data) && s.n <= lim.MaxRecords {
		if data[i] == '[' {
			i = s.array(i)
		} else {
			i = s.object(i)
		}
	}
	switch {
	case s.n > lim.MaxRecords:
		return whole(data, ReasonTooManyRecords, sprintf("the message holds more than %d records", lim.MaxRecords))
	case !s.wellFormed:
		return whole(data, ReasonNotJSON, s.out.Rejects[0].Detail)
	case s.n == 0:
		return whole(data, ReasonEmptyMessage, "the message holds no records (an empty JSON array)")
	}
	return s.out
}

// whole rejects the whole message once.
func whole(data []byte, reason, detail string) Parsed {
	return Parsed{Rejects: []Reject{{Index: -1, Reason: reason, Detail: detail, Raw: data}}}
}

// splitters keep Parse's state off the stack, which a push delivery's
// goroutine would otherwise grow (and copy) after every garbage collection
// shrinks it, and keep the parser's buffers from one message to the next.
var splitters = sync.Pool{New: func() any { return new(splitter) }}

// recycle returns s to splitters, keeping only its buffers; a large one
// is let go rather than held by an idle pool.
func (s *splitter) recycle() {
	buf, unknown := s.p.buf[:0], s.p.unknown[:0]
	if cap(buf) > 64<<10 {
		buf = nil
	}
	if cap(unknown) > 1024 {
		unknown = nil
	}
	*s = splitter{p: parser{buf: buf, unknown: unknown}}
	splitters.Put(s)
}

// splitter is Parse's state while it walks one message.
type splitter struct {
	lim        Limits
	p          parser
	data       []byte
	out        Parsed
	n          int  // records seen, valid or not
	wellFormed bool // some item was syntactically valid JSON
	work       int  // bytes scanned in the stream, to keep error recovery linear
}

// object reads the item at data[i], not an array, and returns where the
// next one starts.
func (s *splitter) object(i int) int {
	v, err := s.p.scanItem(s.data, i, 0)
	if err != nil {
		// Resume right after the broken line, unless rescanning what
		// the failed scan covered has cost too much already.
		from := i
		if s.work += err.off - i; s.work > 4*len(s.data) {
			from = err.off
		}
		next := resync(s.data, i, from)
		s.garbage(i, next, err)
		return next
	}
	s.work += v.end - i
	s.wellFormed = true
	s.item(v)
	return skipWS(s.data, v.end)
}

// array reads the array at data[i], whose elements are records. A syntax
// error inside it leaves no reliable place to resume, so the rest of the
// message becomes one reject.
func (s *splitter) array(i int) int {
	data := s.data
	j := skipWS(data, i+1)
	if j < len(data) && data[j] == ']' {
		s.wellFormed = true
		return skipWS(data, j+1)
	}
	for s.n <= s.p.lim.MaxRecords {
		v, err := s.p.scanItem(data, j, 1)
		if err != nil {
			s.garbage(j, len(data), err)
			return len(data)
		}
		s.wellFormed = true
		s.item(v)
		j = skipWS(data, v.end)
		if j < len(data) && data[j] == ',' {
			j = skipWS(data, j+1)
			continue
		}
		if j < len(data) && data[j] == ']' {
			return skipWS(data, j+1)
		}
		s.garbage(j, len(data), unexpected(data, j, "expected ',' or ']' in an array"))
		return len(data)
	}
	return i // too many records: Parse stops
}

// minEstimatedRecordBytes bounds item's estimate of a batch's records, so
// what it reserves is at most about four times the message's size.
const minEstimatedRecordBytes = 120

// item judges one syntactically valid item.
func (s *splitter) item(v val) {
	p := &s.p
	raw := s.data[v.start:v.end]
	if s.n == 1 { // a batch: share the strings that repeat from record to record
		p.intern = make(map[string]string, 64)
		// A Record is about 480 bytes, and growing the slice by
		// appending allocated twice what a 500-record message keeps.
		// The estimate takes this item's size as every item's; the
		// floor keeps a tiny first item from reserving more than four
		// times the message's own bytes.
		est := min(len(s.data)/max(len(raw)+1, minEstimatedRecordBytes), s.lim.MaxRecords) + 1
		s.out.Records = slices.Grow(s.out.Records, est-len(s.out.Records))
	}
	var rej *Reject
	switch {
	case len(raw) > p.lim.MaxRecordBytes:
		rej = p.tooLarge(raw)
	case v.kind != kindObject:
		rej = notObject(raw, v)
	default:
		s.out.Records = append(s.out.Records, Record{})
		p.startRecord(s.data, v)
		if rej = p.record(s.data, &p.loc, true, &s.out.Records[len(s.out.Records)-1]); rej != nil {
			s.out.Records = s.out.Records[:len(s.out.Records)-1]
			if len(s.out.Records) == 0 {
				s.out.Records = nil // as when no record was ever accepted
			}
		}
	}
	if rej != nil {
		rej.Index, rej.Raw = s.n, raw
		s.out.Rejects = append(s.out.Rejects, *rej)
	}
	s.n++
}

// garbage rejects data[start:end], which is not JSON.
func (s *splitter) garbage(start, end int, err *syntaxError) {
	data := s.data
	for end > start && isWS(data[end-1]) {
		end--
	}
	if start == end {
		// An array cut off after a ',' or an element: quarantine the
		// last byte, so that Raw is never empty.
		for start > 0 && isWS(data[start-1]) {
			start--
		}
		start--
	}
	s.out.Rejects = append(s.out.Rejects, Reject{Index: s.n, Reason: ReasonNotJSON, Detail: err.Error(), Raw: data[start:end]})
	s.n++
}

// resync finds where to resume after a syntax error in the value starting
// at b[start]: the first line starting with '{' or '[' that begins after
// start and no earlier than the line holding b[from]. With from = start one
// broken line of an ndjson batch costs only that line; Parse moves from up to
// the error once recovery costs too much (crafted input could otherwise make
// it rescan the same bytes over and over).
func resync(b []byte, start, from int) int {
	i := min(from, len(b))
	for i > start && b[i-1] != '\n' {
		i-- // back to the start of the error's line
	}
	if i <= start {
		i = start + 1
		for i < len(b) && b[i-1] != '\n' {
			i++
		}
	}
	for i < len(b) {
		j := i
		for j < len(b) && (b[j] == ' ' || b[j] == '\t' || b[j] == '\r') {
			j++
		}
		if j < len(b) && (b[j] == '{' || b[j] == '[') {
			return j
		}
		for i < len(b) && b[i] != '\n' {
			i++
		}
		i++
	}
	return len(b)
}
