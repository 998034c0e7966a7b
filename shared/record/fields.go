package record

import (
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

type fieldID uint8

// The order is the order of validation: a record with several problems is
// rejected for the first, so the same input always gets the same Reject.
const (
	fSchema fieldID = iota
	fMessageID
	fReceivedAt
	fOrganization
	fEnvironment
	fAPIProxy
	fAPIProxyRevision
	fProxyBasepath
	fRequestVerb
	fRequestPath
	fResponseStatusCode
	fTargetResponseCode
	fTotalResponseTime
	fTargetResponseTime
	fRequestSize
	fResponseSize
	fClientIP
	fUserAgent
	fTargetHost
	fFaultName
	fIsError
	fDeveloperApp
	fDeveloperEmail
	fAPIProduct
	fClientID
	fTenant
	fIdentity
	fAttributes
	numFields
	fUnknown = numFields
)

var fieldNames = [numFields]string{
	fSchema:             "schema",
	fMessageID:          "message_id",
	fReceivedAt:         "received_at",
	fOrganization:       "organization",
	fEnvironment:        "environment",
	fAPIProxy:           "apiproxy",
	fAPIProxyRevision:   "apiproxy_revision",
	fProxyBasepath:      "proxy_basepath",
	fRequestVerb:        "request_verb",
	fRequestPath:        "request_path",
	fResponseStatusCode: "response_status_code",
	fTargetResponseCode: "target_response_code",
	fTotalResponseTime:  "total_response_time",
	fTargetResponseTime: "target_response_time",
	fRequestSize:        "request_size",
	fResponseSize:       "response_size",
	fClientIP:           "client_ip",
	fUserAgent:          "useragent",
	fTargetHost:         "target_host",
	fFaultName:          "fault_name",
	fIsError:            "is_error",
	fDeveloperApp:       "developer_app",
	fDeveloperEmail:     "developer_email",
	fAPIProduct:         "api_product",
	fClientID:           "client_id",
	fTenant:             "tenant",
	fIdentity:           "identity",
	fAttributes:         "attributes",
}

// lookupField avoids a map: a switch on string(b) compiles to comparisons
// without converting (allocating) the key.
func lookupField(b []byte) fieldID {
	switch string(b) {
	case "schema":
		return fSchema
	case "message_id":
		return fMessageID
	case "received_at":
		return fReceivedAt
	case "organization":
		return fOrganization
	case "environment":
		return fEnvironment
	case "apiproxy":
		return fAPIProxy
	case "apiproxy_revision":
		return fAPIProxyRevision
	case "proxy_basepath":
		return fProxyBasepath
	case "request_verb":
		return fRequestVerb
	case "request_path":
		return fRequestPath
	case "response_status_code":
		return fResponseStatusCode
	case "target_response_code":
		return fTargetResponseCode
	case "total_response_time":
		return fTotalResponseTime
	case "target_response_time":
		return fTargetResponseTime
	case "request_size":
		return fRequestSize
	case "response_size":
		return fResponseSize
	case "client_ip":
		return fClientIP
	case "useragent":
		return fUserAgent
	case "target_host":
		return fTargetHost
	case "fault_name":
		return fFaultName
	case "is_error":
		return fIsError
	case "developer_app":
		return fDeveloperApp
	case "developer_email":
		return fDeveloperEmail
	case "api_product":
		return fAPIProduct
	case "client_id":
		return fClientID
	case "tenant":
		return fTenant
	case "identity":
		return fIdentity
	case "attributes":
		return fAttributes
	}
	return fUnknown
}

// Limits of the record-v1 design, in UTF-8 bytes.
const (
	maxMessageID     = 128
	maxName          = 128 // organization, environment, tenant
	maxAPIProxy      = 255
	maxBasepath      = 1024
	maxVerb          = 32
	maxPath          = 2048
	maxUserAgent     = 512
	maxHost          = 255 // target_host, fault_name
	maxAttributes    = 32
	maxExtraDepth    = 64
	maxExtraNumber   = 256  // characters of one number in an unknown field
	maxExtraExponent = 1000 // |exponent| of such a number
	maxStatus        = 599
	snippetBytes     = 64
)

var sprintf = fmt.Sprintf

type parser struct {
	loc     located // the members of the object scanItem scanned last
	lim     *Limits
	now     time.Time
	buf     []byte
	unknown []kv
	// intern shares the strings that repeat across the records of one
	// message (organization, proxy, user agent, ...); nil disables it.
	intern map[string]string
}

type kv struct{ key, value val }

// optNums backs all optional numeric pointers of one Record with a single
// allocation.
type optNums struct {
	revision, totalTime, targetTime int32
	targetCode                      int16
	reqSize, respSize               int64
	isError                         bool
}

func invalid(field, format string, args ...any) *Reject {
	return &Reject{Reason: ReasonInvalidField, Field: field, Detail: sprintf(format, args...)}
}

func (p *parser) tooLarge(raw []byte) *Reject {
	return &Reject{Reason: ReasonRecordTooLarge, Raw: raw,
		Detail: sprintf("the record is %d bytes, the limit is %d", len(raw), p.lim.MaxRecordBytes)}
}

// snippet quotes at most snippetBytes of the input for a Detail.
func snippet(b []byte) string {
	if len(b) <= snippetBytes {
		return Storable(string(b))
	}
	return Clip(string(b[:min(len(b), snippetBytes+utf8.UTFMax)]), snippetBytes) + "…"
}

func (p *parser) token(b []byte, v val) string { return snippet(b[v.start:v.end]) }

// fieldName turns a decoded key into a Field value that is safe to log.
func fieldName(key []byte) string { return snippet(key) }

func (p *parser) missing(name string, v val) *Reject {
	what := "absent"
	switch v.kind {
	case kindNull:
		what = "null"
	case kindString:
		what = "an empty string"
	}
	return &Reject{Reason: ReasonMissingField, Field: name, Detail: sprintf("required field %s is %s", name, what)}
}

func (p *parser) internString(b []byte) string {
	if p.intern == nil {
		return string(b)
	}
	if s, ok := p.intern[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(p.intern) < 1024 {
		p.intern[s] = s
	}
	return s
}

// text decodes the string field v. Optional fields treat absent, null and ""
// alike; max is in bytes, 0 for no limit.
func (p *parser) text(b []byte, v val, name string, max int, required bool) ([]byte, *Reject) {
	if v.absent() {
		if required {
			return nil, p.missing(name, v)
		}
		return nil, nil
	}
	if v.kind != kindString {
		return nil, invalid(name, "%s must be a string, got %s", name, v.kind)
	}
	out, buf, err := unquote(b, v, p.buf)
	p.buf = buf
	if err != nil {
		return nil, invalid(name, "%s %v", name, err)
	}
	if max > 0 && len(out) > max {
		return nil, invalid(name, "%s is %d bytes long, the limit is %d", name, len(out), max)
	}
	return out, nil
}

func (p *parser) str(b []byte, v val, name string, max int, required, intern bool) (string, *Reject) {
	out, rej := p.text(b, v, name, max, required)
	if rej != nil || out == nil {
		return "", rej
	}
	if intern {
		return p.internString(out), nil
	}
	return string(out), nil
}

type numErr uint8

const (
	numOK numErr = iota
	numNotInteger
	numNegative
	numTooLarge
)

// jsonUint returns the value of a JSON number token that must denote a
// non-negative integer. Like JSON Schema's "integer", 200.0 and 2e2 count as
// 200. The exact decimal arithmetic (no float64) keeps int64 sizes exact and
// is immune to huge exponents.
func jsonUint(tok []byte) (uint64, numErr) {
	neg := tok[0] == '-'
	if neg {
		tok = tok[1:]
	}
	i := 0
	for i < len(tok) && tok[i] >= '0' && tok[i] <= '9' {
		i++
	}
	intPart := tok[:i]
	var frac []byte
	if i < len(tok) && tok[i] == '.' {
		j := i + 1
		for j < len(tok) && tok[j] >= '0' && tok[j] <= '9' {
			j++
		}
		frac = tok[i+1 : j]
		i = j
	}
	exp := 0
	if i < len(tok) && (tok[i] == 'e' || tok[i] == 'E') {
		i++
		expNeg := false
		if tok[i] == '+' || tok[i] == '-' {
			expNeg = tok[i] == '-'
			i++
		}
		for ; i < len(tok); i++ {
			if exp < 1e6 { // saturate: any larger exponent decides the same way
				exp = exp*10 + int(tok[i]-'0')
			}
		}
		if expNeg {
			exp = -exp
		}
	}
	nd := len(intPart) + len(frac)
	digit := func(k int) byte {
		if k < len(intPart) {
			return intPart[k]
		}
		return frac[k-len(intPart)]
	}
	first, last := -1, -1
	for k := 0; k < nd; k++ {
		if digit(k) != '0' {
			if first < 0 {
				first = k
			}
			last = k
		}
	}
	if first < 0 {
		return 0, numOK // zero, including -0 and 0e99
	}
	// value = digits[first..last] * 10^shift
	shift := exp - len(frac) + (nd - 1 - last)
	if shift < 0 {
		return 0, numNotInteger
	}
	if neg {
		return 0, numNegative
	}
	if last-first+1+shift > 20 {
		return 0, numTooLarge
	}
	var u uint64
	for k := first; k <= last; k++ {
		d := uint64(digit(k) - '0')
		if u > (math.MaxUint64-d)/10 {
			return 0, numTooLarge
		}
		u = u*10 + d
	}
	for ; shift > 0; shift-- {
		if u > math.MaxUint64/10 {
			return 0, numTooLarge
		}
		u *= 10
	}
	return u, numOK
}

// digitsUint parses a numeric string (digits only, leading zeros allowed).
func digitsUint(s []byte) (uint64, numErr) {
	if len(s) == 0 {
		return 0, numNotInteger
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, numNotInteger
		}
	}
	for len(s) > 1 && s[0] == '0' {
		s = s[1:]
	}
	if len(s) > 20 {
		return 0, numTooLarge
	}
	var u uint64
	for _, c := range s {
		d := uint64(c - '0')
		if u > (math.MaxUint64-d)/10 {
			return 0, numTooLarge
		}
		u = u*10 + d
	}
	return u, numOK
}

// uint decodes a numeric field: a JSON number or a numeric string.
func (p *parser) uint(b []byte, v val, name string, max uint64, required bool) (u uint64, ok bool, rej *Reject) {
	if v.absent() {
		if required {
			return 0, false, p.missing(name, v)
		}
		return 0, false, nil
	}
	var e numErr
	switch v.kind {
	case kindNumber:
		u, e = jsonUint(b[v.start:v.end])
	case kindString:
		s, rej := p.text(b, v, name, 0, false)
		if rej != nil {
			return 0, false, rej
		}
		u, e = digitsUint(s)
	default:
		return 0, false, invalid(name, "%s must be an integer or a string of digits, got %s", name, v.kind)
	}
	switch {
	case e == numNotInteger:
		return 0, false, invalid(name, "%s %s is not an integer or a string of digits", name, p.token(b, v))
	case e == numNegative:
		return 0, false, invalid(name, "%s %s is negative", name, p.token(b, v))
	case e == numTooLarge || u > max:
		return 0, false, invalid(name, "%s %s is out of range 0–%d", name, p.token(b, v), max)
	}
	return u, true, nil
}

// located is where the members of one record object are.
type located struct {
	f        [numFields]val
	dup      string  // the first known key seen twice
	badKey   *Reject // the first key that cannot be stored
	payload  val     // LogEntry members, noted on the way
	payloads int
	text     bool // has textPayload
	logName  bool // has logName or insertId
}

// collect validates the syntax of the object at b[i] (nested depth levels
// deep) and locates its members in the same pass, so that a record's bytes
// are scanned once. Unknown members go to p.unknown.
func (p *parser) collect(b []byte, i, depth int, m *located) (end int, serr *syntaxError) {
	p.unknown = p.unknown[:0]
	depth++
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, unexpected(b, i, "expected a string key")
		}
		k, err := scanString(b, i)
		if err != nil {
			return 0, err
		}
		i = skipWS(b, k.end)
		if i >= len(b) || b[i] != ':' {
			return 0, unexpected(b, i, "expected ':' after an object key")
		}
		v, err := scanValue(b, skipWS(b, i+1), depth)
		if err != nil {
			return 0, err
		}
		p.note(b, k, v, m)
		i = skipWS(b, v.end)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i < len(b) && b[i] == '}' {
			return i + 1, nil
		}
		return 0, unexpected(b, i, "expected ',' or '}' in an object")
	}
}

func (p *parser) note(b []byte, k, v val, m *located) {
	key, buf, err := unquote(b, k, p.buf)
	p.buf = buf
	if err != nil {
		if m.badKey == nil {
			m.badKey = invalid(fieldName(b[k.start+1:k.end-1]), "the key %s %v", p.token(b, k), err)
		}
		return
	}
	id := lookupField(key)
	if id == fUnknown {
		p.unknown = append(p.unknown, kv{k, v})
		switch string(key) {
		case "jsonPayload":
			m.payload = v
			m.payloads++
		case "textPayload":
			m.text = true
		case "logName", "insertId":
			m.logName = true
		}
		return
	}
	if m.f[id].present() && m.dup == "" {
		m.dup = fieldNames[id]
	}
	m.f[id] = v
}

// record validates the record whose members collect has located; when
// logEntry is set, the object may also be a Cloud Logging LogEntry.
func (p *parser) record(b []byte, m *located, logEntry bool) (Record, *Reject) {
	if m.badKey != nil {
		return Record{}, m.badKey
	}
	f := &m.f
	if logEntry && !f[fSchema].present() {
		// A LogEntry: an object without "schema" but with "jsonPayload",
		// which is the record.
		switch {
		case m.payloads > 1:
			return Record{}, invalid("jsonPayload", "the key jsonPayload appears more than once")
		case m.payloads == 1 && m.payload.kind != kindObject:
			return Record{}, invalid("jsonPayload", "the LogEntry's jsonPayload must be an object, got %s", m.payload.kind)
		case m.payloads == 1:
			var pm located
			p.collect(b, m.payload.start, 0, &pm) // cannot fail: scanned already
			return p.record(b, &pm, false)
		case m.text && m.logName:
			return Record{}, &Reject{Reason: ReasonMissingField, Field: "jsonPayload",
				Detail: "the LogEntry has a textPayload; the record must be its jsonPayload (give the MessageLogging policy's message contentType application/json)"}
		}
	}
	if m.dup != "" {
		// A parser differential (first vs last wins) on a field like
		// tenant, the row-level security key, is a security bug.
		return Record{}, invalid(m.dup, "the key %s appears more than once", m.dup)
	}
	if v := f[fSchema]; v.absent() {
		return Record{}, p.missing("schema", v)
	} else if v.kind != kindString {
		return Record{}, invalid("schema", "schema must be the string %q, got %s", SchemaV1, v.kind)
	} else if string(b[v.start:v.end]) != `"`+SchemaV1+`"` {
		s, rej := p.text(b, v, "schema", 0, true)
		if rej != nil {
			return Record{}, rej
		}
		if string(s) != SchemaV1 {
			return Record{}, &Reject{Reason: ReasonUnknownSchema, Field: "schema",
				Detail: sprintf("schema %s is not %s", p.token(b, v), SchemaV1)}
		}
	}

	var r Record
	var rej *Reject
	var s []byte
	if s, rej = p.text(b, f[fMessageID], "message_id", maxMessageID, true); rej != nil {
		return Record{}, rej
	}
	for _, c := range string(s) {
		if unicode.IsControl(c) {
			return Record{}, invalid("message_id", "message_id %s contains a control character", p.token(b, f[fMessageID]))
		}
	}
	r.MessageID = string(s)
	if r.ReceivedAt, rej = p.receivedAt(b, f[fReceivedAt]); rej != nil {
		return Record{}, rej
	}
	if r.Organization, rej = p.str(b, f[fOrganization], "organization", maxName, true, true); rej != nil {
		return Record{}, rej
	}
	if r.Environment, rej = p.str(b, f[fEnvironment], "environment", maxName, true, true); rej != nil {
		return Record{}, rej
	}
	if r.APIProxy, rej = p.str(b, f[fAPIProxy], "apiproxy", maxAPIProxy, true, true); rej != nil {
		return Record{}, rej
	}

	var nums *optNums
	num := func() *optNums {
		if nums == nil {
			nums = new(optNums)
		}
		return nums
	}
	u, ok, rej := p.uint(b, f[fAPIProxyRevision], "apiproxy_revision", math.MaxInt32, false)
	if rej != nil {
		return Record{}, rej
	}
	if ok {
		n := num()
		n.revision = int32(u)
		r.APIProxyRevision = &n.revision
	}
	if r.ProxyBasepath, rej = p.str(b, f[fProxyBasepath], "proxy_basepath", maxBasepath, false, true); rej != nil {
		return Record{}, rej
	}
	if r.RequestVerb, rej = p.verb(b, f[fRequestVerb]); rej != nil {
		return Record{}, rej
	}
	if r.RequestPath, rej = p.path(b, f[fRequestPath]); rej != nil {
		return Record{}, rej
	}
	if u, _, rej = p.uint(b, f[fResponseStatusCode], "response_status_code", maxStatus, true); rej != nil {
		return Record{}, rej
	}
	r.ResponseStatusCode = int16(u)
	if u, ok, rej = p.uint(b, f[fTargetResponseCode], "target_response_code", maxStatus, false); rej != nil {
		return Record{}, rej
	} else if ok {
		n := num()
		n.targetCode = int16(u)
		r.TargetResponseCode = &n.targetCode
	}
	if u, ok, rej = p.uint(b, f[fTotalResponseTime], "total_response_time", math.MaxInt32, false); rej != nil {
		return Record{}, rej
	} else if ok {
		n := num()
		n.totalTime = int32(u)
		r.TotalResponseTime = &n.totalTime
	}
	if u, ok, rej = p.uint(b, f[fTargetResponseTime], "target_response_time", math.MaxInt32, false); rej != nil {
		return Record{}, rej
	} else if ok {
		n := num()
		n.targetTime = int32(u)
		r.TargetResponseTime = &n.targetTime
	}
	if u, ok, rej = p.uint(b, f[fRequestSize], "request_size", math.MaxInt64, false); rej != nil {
		return Record{}, rej
	} else if ok {
		n := num()
		n.reqSize = int64(u)
		r.RequestSize = &n.reqSize
	}
	if u, ok, rej = p.uint(b, f[fResponseSize], "response_size", math.MaxInt64, false); rej != nil {
		return Record{}, rej
	} else if ok {
		n := num()
		n.respSize = int64(u)
		r.ResponseSize = &n.respSize
	}
	if r.ClientIP, rej = p.clientIP(b, f[fClientIP]); rej != nil {
		return Record{}, rej
	}
	if s, rej = p.text(b, f[fUserAgent], "useragent", 0, false); rej != nil {
		if s, rej = lenientText(b, f[fUserAgent], rej); rej != nil {
			return Record{}, rej
		}
	}
	if len(s) > maxUserAgent {
		// A client controls its User-Agent; an over-long one must not
		// cost the record of its call.
		n := maxUserAgent
		for !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n]
	}
	if s != nil {
		r.UserAgent = p.internString(s)
	}
	if r.TargetHost, rej = p.str(b, f[fTargetHost], "target_host", maxHost, false, true); rej != nil {
		return Record{}, rej
	}
	if r.FaultName, rej = p.str(b, f[fFaultName], "fault_name", maxHost, false, true); rej != nil {
		return Record{}, rej
	}
	if v := f[fIsError]; !v.absent() {
		var e bool
		if v.kind == kindString {
			if s, rej = p.text(b, v, "is_error", 0, false); rej != nil {
				return Record{}, rej
			}
		}
		switch {
		case v.kind == kindTrue || v.kind == kindString && string(s) == "true":
			e = true
		case v.kind == kindFalse || v.kind == kindString && string(s) == "false":
		default:
			return Record{}, invalid("is_error", "is_error %s must be true, false, \"true\" or \"false\"", p.token(b, v))
		}
		n := num()
		n.isError = e
		r.IsError = &n.isError
	}
	if r.DeveloperApp, rej = p.str(b, f[fDeveloperApp], "developer_app", 0, false, true); rej != nil {
		return Record{}, rej
	}
	if r.DeveloperEmail, rej = p.str(b, f[fDeveloperEmail], "developer_email", 0, false, true); rej != nil {
		return Record{}, rej
	}
	if r.APIProduct, rej = p.str(b, f[fAPIProduct], "api_product", 0, false, true); rej != nil {
		return Record{}, rej
	}
	if r.ClientID, rej = p.str(b, f[fClientID], "client_id", 0, false, true); rej != nil {
		return Record{}, rej
	}
	if r.Tenant, rej = p.str(b, f[fTenant], "tenant", maxName, false, true); rej != nil {
		return Record{}, rej
	}
	if r.Tenant == "" {
		r.Tenant = r.Organization
	}
	if r.Identity, rej = p.identity(b, f[fIdentity]); rej != nil {
		return Record{}, rej
	}
	if r.Attributes, rej = p.attributes(b, f[fAttributes]); rej != nil {
		return Record{}, rej
	}
	if r.Extra, rej = p.extra(b); rej != nil {
		return Record{}, rej
	}
	return r, nil
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func (p *parser) verb(b []byte, v val) (string, *Reject) {
	s, rej := p.text(b, v, "request_verb", 0, true)
	if rej != nil {
		return "", rej
	}
	if len(s) > maxVerb {
		return "", invalid("request_verb", "request_verb is %d bytes long, the limit is %d", len(s), maxVerb)
	}
	upper := true
	for _, c := range s {
		if !isLetter(c) {
			return "", invalid("request_verb", "request_verb %s must consist of letters only", p.token(b, v))
		}
		upper = upper && c <= 'Z'
	}
	switch string(s) { // no allocation for the common verbs
	case "GET", "get":
		return "GET", nil
	case "POST", "post":
		return "POST", nil
	case "PUT", "put":
		return "PUT", nil
	case "DELETE", "delete":
		return "DELETE", nil
	case "PATCH", "patch":
		return "PATCH", nil
	case "HEAD", "head":
		return "HEAD", nil
	case "OPTIONS", "options":
		return "OPTIONS", nil
	}
	if upper {
		return string(s), nil
	}
	return strings.ToUpper(string(s)), nil
}

func (p *parser) path(b []byte, v val) (string, *Reject) {
	s, rej := p.text(b, v, "request_path", 0, true)
	if rej != nil {
		return "", rej
	}
	// request.path excludes the query already; a template using another
	// variable (e.g. request.uri) must not leak query parameters (tokens,
	// personal data) into storage.
	for i, c := range s {
		if c == '?' {
			s = s[:i]
			break
		}
	}
	if len(s) == 0 {
		return "", invalid("request_path", "request_path %s has no path before its query string", p.token(b, v))
	}
	if len(s) > maxPath {
		return "", invalid("request_path", "request_path is %d bytes long without its query string, the limit is %d", len(s), maxPath)
	}
	return string(s), nil
}

func (p *parser) clientIP(b []byte, v val) (netip.Addr, *Reject) {
	s, rej := p.text(b, v, "client_ip", 0, false)
	if rej != nil || s == nil {
		return netip.Addr{}, rej
	}
	a, err := netip.ParseAddr(string(s))
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, invalid("client_ip", "client_ip %s is not an IPv4 or IPv6 address", p.token(b, v))
	}
	return a.Unmap(), nil
}

func (p *parser) identity(b []byte, v val) (Identity, *Reject) {
	var id Identity
	if v.absent() {
		return id, nil
	}
	if v.kind != kindObject {
		return id, invalid("identity", "identity must be an object, got %s", v.kind)
	}
	const (
		subject = iota
		issuer
		email
		auth
		scopes
		n
	)
	names := [n]string{"identity.subject", "identity.issuer", "identity.email", "identity.auth", "identity.scopes"}
	var f [n]val
	m := newMembers(b, v)
	for {
		k, x, ok := m.next()
		if !ok {
			break
		}
		key, buf, err := unquote(b, k, p.buf)
		p.buf = buf
		if err != nil {
			continue // not a name we know; unknown members are ignored
		}
		i := -1
		switch string(key) {
		case "subject":
			i = subject
		case "issuer":
			i = issuer
		case "email":
			i = email
		case "auth":
			i = auth
		case "scopes":
			i = scopes
		}
		if i < 0 {
			continue
		}
		if f[i].present() {
			return id, invalid(names[i], "the key %s appears more than once", names[i])
		}
		f[i] = x
	}
	var rej *Reject
	if id.Subject, rej = p.str(b, f[subject], names[subject], 0, false, false); rej != nil {
		return id, rej
	}
	if id.Issuer, rej = p.str(b, f[issuer], names[issuer], 0, false, true); rej != nil {
		return id, rej
	}
	if id.Email, rej = p.str(b, f[email], names[email], 0, false, false); rej != nil {
		return id, rej
	}
	if x := f[auth]; !x.absent() {
		var s []byte
		if x.kind == kindString {
			if s, rej = p.text(b, x, names[auth], 0, false); rej != nil {
				return id, rej
			}
		}
		switch string(s) {
		case "oauth2":
			id.Auth = "oauth2"
		case "jwt":
			id.Auth = "jwt"
		case "apikey":
			id.Auth = "apikey"
		case "none":
			id.Auth = "none"
		default:
			return id, invalid(names[auth], "identity.auth %s must be one of oauth2, jwt, apikey, none", p.token(b, x))
		}
	}
	x := f[scopes]
	switch {
	case x.absent():
	case x.kind == kindString:
		// Apigee's scope variables are OAuth scope strings, space-delimited.
		s, rej := p.text(b, x, names[scopes], 0, false)
		if rej != nil {
			return id, rej
		}
		if fields := strings.Fields(string(s)); len(fields) > 0 {
			id.Scopes = fields
		}
	case x.kind == kindArray:
		e := newElements(b, x)
		for {
			el, ok := e.next()
			if !ok {
				break
			}
			if el.kind != kindString {
				return id, invalid(names[scopes], "identity.scopes must hold strings, got %s", el.kind)
			}
			s, rej := p.text(b, el, names[scopes], 0, false)
			if rej != nil {
				return id, rej
			}
			if len(s) > 0 {
				id.Scopes = append(id.Scopes, p.internString(s))
			}
		}
	default:
		return id, invalid(names[scopes], "identity.scopes must be an array of strings or a space-delimited string, got %s", x.kind)
	}
	return id, nil
}

func (p *parser) attributes(b []byte, v val) (map[string]string, *Reject) {
	if v.absent() {
		return nil, nil
	}
	if v.kind != kindObject {
		return nil, invalid("attributes", "attributes must be an object of strings, got %s", v.kind)
	}
	var attrs map[string]string
	m := newMembers(b, v)
	for {
		k, x, ok := m.next()
		if !ok {
			break
		}
		key, rej := p.text(b, k, "attributes", 0, false)
		if rej != nil {
			return nil, invalid("attributes", "the attributes key %s %s", p.token(b, k), strings.TrimPrefix(rej.Detail, "attributes "))
		}
		ks := p.internString(key)
		if x.kind != kindString {
			return nil, invalid("attributes", "attributes[%s] must be a string, got %s", p.token(b, k), x.kind)
		}
		val, rej := p.text(b, x, "attributes", 0, false)
		if rej != nil {
			return nil, invalid("attributes", "attributes[%s] %s", p.token(b, k), strings.TrimPrefix(rej.Detail, "attributes "))
		}
		if attrs == nil {
			attrs = make(map[string]string, 8)
		}
		if _, dup := attrs[ks]; dup {
			return nil, invalid("attributes", "the attributes key %s appears more than once", p.token(b, k))
		}
		if len(attrs) == maxAttributes {
			return nil, invalid("attributes", "attributes has more than %d keys", maxAttributes)
		}
		attrs[ks] = p.internString(val)
	}
	return attrs, nil
}

// extra keeps the unknown top-level fields. They are stored as jsonb, so
// whatever PostgreSQL would refuse (and fail a whole COPY batch with) is
// rejected here, naming the field.
func (p *parser) extra(b []byte) (map[string]json.RawMessage, *Reject) {
	if len(p.unknown) == 0 {
		return nil, nil
	}
	extra := make(map[string]json.RawMessage, len(p.unknown))
	for _, u := range p.unknown {
		key, buf, _ := unquote(b, u.key, p.buf) // validated by record already
		p.buf = buf
		ks := string(key)
		if _, dup := extra[ks]; dup {
			return nil, invalid(fieldName(key), "the key %s appears more than once", p.token(b, u.key))
		}
		if err := p.checkJSONB(b, u.value, 1); err != nil {
			return nil, invalid(fieldName([]byte(ks)), "the unknown field %s %v", p.token(b, u.key), err)
		}
		extra[ks] = append(json.RawMessage(nil), b[u.value.start:u.value.end]...)
	}
	return extra, nil
}

type jsonbError string

func (e jsonbError) Error() string { return string(e) }

const (
	errTooDeep   = jsonbError("is nested more than 64 levels deep")
	errBigNumber = jsonbError("holds a number longer than 256 characters or with an exponent beyond ±1000")
)

func (p *parser) checkJSONB(b []byte, v val, depth int) error {
	switch v.kind {
	case kindString:
		var err error
		_, p.buf, err = unquote(b, v, p.buf)
		return err
	case kindNumber:
		return checkNumber(b[v.start:v.end])
	case kindObject:
		if depth > maxExtraDepth {
			return errTooDeep
		}
		m := newMembers(b, v)
		for {
			k, x, ok := m.next()
			if !ok {
				return nil
			}
			if err := p.checkJSONB(b, k, depth); err != nil {
				return err
			}
			if err := p.checkJSONB(b, x, depth+1); err != nil {
				return err
			}
		}
	case kindArray:
		if depth > maxExtraDepth {
			return errTooDeep
		}
		e := newElements(b, v)
		for {
			x, ok := e.next()
			if !ok {
				return nil
			}
			if err := p.checkJSONB(b, x, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkNumber(tok []byte) error {
	if len(tok) > maxExtraNumber {
		return errBigNumber
	}
	for i, c := range tok {
		if c == 'e' || c == 'E' {
			exp := 0
			for _, d := range tok[i+1:] {
				if d >= '0' && d <= '9' {
					exp = exp*10 + int(d-'0')
					if exp > maxExtraExponent {
						return errBigNumber
					}
				}
			}
			break
		}
	}
	return nil
}

// lenientText recovers a string field that failed only on its content (NUL,
// invalid UTF-8, a lone surrogate): NUL is dropped and bad bytes become
// U+FFFD. It is for fields the API client controls (useragent), whose
// oddities must not cost the record of the call.
func lenientText(b []byte, v val, rej *Reject) ([]byte, *Reject) {
	if v.kind != kindString {
		return nil, rej
	}
	var s string
	if err := json.Unmarshal(b[v.start:v.end], &s); err != nil {
		return nil, rej
	}
	return []byte(Storable(s)), nil
}
