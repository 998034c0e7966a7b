package record

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
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
	// rec is the record being read, in the input at base; src, made on
	// first use, is its bytes as one string, of which keep hands out the
	// record's string fields: one allocation per record instead of one per
	// field.
	rec  val
	base *byte
	src  string
}

// startRecord makes b[v.start:v.end] the record keep takes strings from.
func (p *parser) startRecord(b []byte, v val) {
	p.rec, p.base, p.src = v, nil, ""
	if len(b) > 0 {
		p.base = &b[0]
	}
}

// keep returns s as a string. s must be what text or plainText returned
// for v: then, without escapes, it is b[v.start+1:] cut to len(s), and
// the string is a slice of the record's src.
func (p *parser) keep(b []byte, v val, s []byte) string {
	start := v.start + 1
	if v.esc || len(b) == 0 || &b[0] != p.base || start < p.rec.start || start+len(s) > p.rec.end {
		return string(s)
	}
	if p.src == "" {
		p.src = string(b[p.rec.start:p.rec.end])
	}
	start -= p.rec.start
	return p.src[start : start+len(s)]
}

type kv struct{ key, value val }

// optNums backs the optional numbers and the boolean of one Record with a
// single allocation; TestOptNumsFitTheTable keeps the arrays large enough.
type optNums struct {
	i16           [1]int16
	i32           [3]int32
	i64           [2]int64
	b             bool
	n16, n32, n64 uint8
}

// get returns n, allocating it into *slot on first use.
func (n *optNums) get(slot **optNums) *optNums {
	if n == nil {
		n = new(optNums)
		*slot = n
	}
	return n
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

// unquote decodes the string v, in p.buf if it has escapes. The hot
// callers first take the bytes of a plain ASCII string, the common case, as
// they are, without a call.
func (p *parser) unquote(b []byte, v val) ([]byte, error) {
	out, buf, err := unquote(b, v, p.buf)
	p.buf = buf
	return out, err
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
	out := b[v.start+1 : v.end-1]
	if v.esc || v.nonASCII {
		var err error
		if out, err = p.unquote(b, v); err != nil {
			return nil, invalid(name, "%s %v", name, err)
		}
	}
	if max > 0 && len(out) > max {
		return nil, invalid(name, "%s is %d bytes long, the limit is %d", name, len(out), max)
	}
	return out, nil
}

// plainText returns v's bytes when v is a non-empty string of at most max
// bytes (0: no limit) without escapes or non-ASCII bytes, the common case,
// for which text would return them after checks it need not make.
func plainText(b []byte, v val, max int) ([]byte, bool) {
	n := v.end - v.start - 2
	if v.kind != kindString || v.esc || v.nonASCII || n <= 0 || max > 0 && n > max {
		return nil, false
	}
	return b[v.start+1 : v.end-1], true
}

func (p *parser) str(b []byte, v val, name string, max int, required, intern bool) (string, *Reject) {
	out, ok := plainText(b, v, max)
	if !ok {
		var rej *Reject
		if out, rej = p.text(b, v, name, max, required); rej != nil || out == nil {
			return "", rej
		}
	}
	if intern && p.intern != nil {
		return p.internString(out), nil
	}
	return p.keep(b, v, out), nil
}

type numErr uint8

const (
	numOK numErr = iota
	numNotInteger
	numNegative
	numTooLarge
)

// splitNumber splits an unsigned JSON number token into its digits before
// and after the decimal point and its exponent, which saturates: any larger
// exponent decides the same way.
func splitNumber(tok []byte) (intPart, frac []byte, exp int) {
	i := 0
	for i < len(tok) && tok[i] >= '0' && tok[i] <= '9' {
		i++
	}
	intPart = tok[:i]
	if i < len(tok) && tok[i] == '.' {
		j := i + 1
		for j < len(tok) && tok[j] >= '0' && tok[j] <= '9' {
			j++
		}
		frac = tok[i+1 : j]
		i = j
	}
	if i < len(tok) && (tok[i] == 'e' || tok[i] == 'E') {
		i++
		expNeg := false
		if tok[i] == '+' || tok[i] == '-' {
			expNeg = tok[i] == '-'
			i++
		}
		for ; i < len(tok); i++ {
			if exp < 1e6 {
				exp = exp*10 + int(tok[i]-'0')
			}
		}
		if expNeg {
			exp = -exp
		}
	}
	return intPart, frac, exp
}

// jsonUint returns the value of a JSON number token that must denote a
// non-negative integer. Like JSON Schema's "integer", 200.0 and 2e2 count as
// 200. The exact decimal arithmetic (no float64) keeps int64 sizes exact and
// is immune to huge exponents.
func jsonUint(tok []byte) (uint64, numErr) {
	neg := tok[0] == '-'
	if neg {
		tok = tok[1:]
	}
	intPart, frac, exp := splitNumber(tok)
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
		s, ok := plainText(b, v, 0)
		if !ok {
			var rej *Reject
			if s, rej = p.text(b, v, name, 0, false); rej != nil {
				return 0, false, rej
			}
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
	key := b[k.start+1 : k.end-1]
	if k.esc || k.nonASCII {
		var err error
		if key, err = p.unquote(b, k); err != nil {
			if m.badKey == nil {
				m.badKey = invalid(fieldName(b[k.start+1:k.end-1]), "the key %s %v", p.token(b, k), err)
			}
			return
		}
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
		m.dup = fields[id].Key
	}
	m.f[id] = v
}

// fSchema is the first field: nothing else is read from a record of
// another version.
const fSchema fieldID = 0

// defaults maps a field with a Default to the field it takes its value from.
var defaults = func() (d [numFields]fieldID) {
	for i, f := range fields {
		d[i] = fUnknown
		for j, g := range fields[:i] {
			if f.Default != "" && g.Key == f.Default {
				d[i] = fieldID(j)
			}
		}
	}
	return d
}()

// record validates the record whose members collect has located; when
// logEntry is set, the object may also be a Cloud Logging LogEntry. It
// decodes into r, which must be zero, and leaves r undefined on a reject.
// (The caller's r, not a local one: the table's setters would move a local
// Record to the heap, one allocation per record.)
func (p *parser) record(b []byte, m *located, logEntry bool, r *Record) *Reject {
	if m.badKey != nil {
		return m.badKey
	}
	if logEntry && !m.f[fSchema].present() {
		if rej, done := p.logEntry(b, m, r); done {
			return rej
		}
	}
	if m.dup != "" {
		// A parser differential (first vs last wins) on a field like
		// tenant, the row-level security key, is a security bug.
		return invalid(m.dup, "the key %s appears more than once", m.dup)
	}
	var nums *optNums
	for id := range fieldID(numFields) {
		if rej := p.field(b, id, m, r, &nums); rej != nil {
			return rej
		}
	}
	return nil
}

// logEntry handles an object without "schema": a LogEntry whose
// jsonPayload is the record. done is false when it is not one.
func (p *parser) logEntry(b []byte, m *located, r *Record) (rej *Reject, done bool) {
	switch {
	case m.payloads > 1:
		return invalid("jsonPayload", "the key jsonPayload appears more than once"), true
	case m.payloads == 1 && m.payload.kind != kindObject:
		return invalid("jsonPayload", "the LogEntry's jsonPayload must be an object, got %s", m.payload.kind), true
	case m.payloads == 1:
		var pm located
		p.collect(b, m.payload.start, 0, &pm) // cannot fail: scanned already
		return p.record(b, &pm, false, r), true
	case m.text && m.logName:
		return &Reject{Reason: ReasonMissingField, Field: "jsonPayload",
			Detail: "the LogEntry has a textPayload; the record must be its jsonPayload (give the MessageLogging policy's message contentType application/json)"}, true
	}
	return nil, false
}

// field validates fields[id] and stores it in r.
func (p *parser) field(b []byte, id fieldID, m *located, r *Record, nums **optNums) *Reject {
	f := &fields[id]
	v := m.f[id]
	var s string
	var rej *Reject
	switch f.Kind {
	case KindSchema:
		return p.schema(b, v)
	case KindText:
		if s, rej = p.str(b, v, f.Key, f.Max, f.Required, f.intern); s == "" && rej == nil && defaults[id] != fUnknown {
			s = *at[string](r, defaults[id])
		}
	case KindMessageID:
		s, rej = p.messageID(b, v, f)
	case KindTime:
		var t time.Time
		t, rej = p.receivedAt(b, v)
		*at[time.Time](r, id) = t
		return rej
	case KindInt:
		return p.integer(b, v, id, r, nums)
	case KindVerb:
		s, rej = p.verb(b, v, f)
	case KindPath:
		s, rej = p.path(b, v, f)
	case KindIP:
		var a netip.Addr
		a, rej = p.clientIP(b, v, f)
		*at[netip.Addr](r, id) = a
		return rej
	case KindUserAgent:
		s, rej = p.userAgent(b, v, f)
	case KindBool:
		return p.boolean(b, v, id, r, nums)
	case KindObject:
		return p.object(b, id, v, m)
	case KindAuth:
		s, rej = p.auth(b, v, f)
	case KindScopes:
		var scopes []string
		scopes, rej = p.scopes(b, v, f)
		*at[[]string](r, id) = scopes
		return rej
	case KindAttributes:
		var attrs map[string]string
		attrs, rej = p.attributes(b, v, f)
		*at[map[string]string](r, id) = attrs
		return rej
	case KindExtra:
		var extra map[string]json.RawMessage
		extra, rej = p.extra(b)
		*at[map[string]json.RawMessage](r, id) = extra
		return rej
	}
	if rej == nil {
		*at[string](r, id) = s
	}
	return rej
}

func (p *parser) schema(b []byte, v val) *Reject {
	const name = "schema"
	switch {
	case v.absent():
		return p.missing(name, v)
	case v.kind != kindString:
		return invalid(name, "schema must be the string %q, got %s", SchemaV1, v.kind)
	case string(b[v.start:v.end]) == `"`+SchemaV1+`"`:
		return nil
	}
	s, rej := p.text(b, v, name, 0, true)
	if rej != nil {
		return rej
	}
	if string(s) != SchemaV1 {
		return &Reject{Reason: ReasonUnknownSchema, Field: name,
			Detail: sprintf("schema %s is not %s", p.token(b, v), SchemaV1)}
	}
	return nil
}

func (p *parser) messageID(b []byte, v val, f *Field) (string, *Reject) {
	s, rej := p.text(b, v, f.Key, f.Max, f.Required)
	if rej != nil {
		return "", rej
	}
	if hasControl(s) {
		return "", invalid(f.Key, "%s %s contains a control character", f.Key, p.token(b, v))
	}
	return p.keep(b, v, s), nil
}

// hasControl reports whether s holds a control character (unicode.IsControl).
// Message ids are ASCII: eight bytes at a time are checked to lie in
// 0x20-0x7e without decoding runes; a word that may not is looked at byte
// by byte.
func hasControl(s []byte) bool {
	const ones, highs, spaces = 0x0101010101010101, 0x8080808080808080, 0x2020202020202020
	for len(s) >= 8 {
		// w-spaces sets a byte's high bit if it is below 0x20 (bytes below
		// the first such borrow nothing), w+ones if it is 0x7f, w if >= 0x80.
		if w := binary.LittleEndian.Uint64(s); ((w-spaces)|(w+ones)|w)&highs != 0 {
			break
		}
		s = s[8:]
	}
	for i, c := range s {
		if c >= utf8.RuneSelf {
			for _, r := range string(s[i:]) {
				if unicode.IsControl(r) {
					return true
				}
			}
			return false
		}
		if c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}

// integer stores a numeric field; the optional ones point into nums, one
// allocation for all of a record's.
func (p *parser) integer(b []byte, v val, id fieldID, r *Record, nums **optNums) *Reject {
	f := &fields[id]
	u, ok, rej := p.uint(b, v, f.Key, uint64(f.Max), f.Required)
	if rej != nil || !ok {
		return rej
	}
	switch layout[id].st {
	case stInt16:
		*at[int16](r, id) = int16(u)
	case stOptInt16:
		n := (*nums).get(nums)
		n.i16[n.n16] = int16(u)
		*at[*int16](r, id), n.n16 = &n.i16[n.n16], n.n16+1
	case stOptInt32:
		n := (*nums).get(nums)
		n.i32[n.n32] = int32(u)
		*at[*int32](r, id), n.n32 = &n.i32[n.n32], n.n32+1
	case stOptInt64:
		n := (*nums).get(nums)
		n.i64[n.n64] = int64(u)
		*at[*int64](r, id), n.n64 = &n.i64[n.n64], n.n64+1
	}
	return nil
}

func (p *parser) boolean(b []byte, v val, id fieldID, r *Record, nums **optNums) *Reject {
	f := &fields[id]
	if v.absent() {
		return nil
	}
	var s []byte
	var rej *Reject
	if v.kind == kindString {
		if s, rej = p.text(b, v, f.Key, 0, false); rej != nil {
			return rej
		}
	}
	var e bool
	switch {
	case v.kind == kindTrue || v.kind == kindString && string(s) == "true":
		e = true
	case v.kind == kindFalse || v.kind == kindString && string(s) == "false":
	default:
		return invalid(f.Key, "%s %s must be true, false, \"true\" or \"false\"", f.Key, p.token(b, v))
	}
	n := (*nums).get(nums)
	n.b = e
	*at[*bool](r, id) = &n.b
	return nil
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func (p *parser) verb(b []byte, v val, f *Field) (string, *Reject) {
	s, rej := p.text(b, v, f.Key, 0, f.Required)
	if rej != nil {
		return "", rej
	}
	if len(s) > f.Max {
		return "", invalid(f.Key, "%s is %d bytes long, the limit is %d", f.Key, len(s), f.Max)
	}
	upper := true
	for _, c := range s {
		if !isLetter(c) {
			return "", invalid(f.Key, "%s %s must consist of letters only", f.Key, p.token(b, v))
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

func (p *parser) path(b []byte, v val, f *Field) (string, *Reject) {
	s, rej := p.text(b, v, f.Key, 0, f.Required)
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
		return "", invalid(f.Key, "%s %s has no path before its query string", f.Key, p.token(b, v))
	}
	if len(s) > f.Max {
		return "", invalid(f.Key, "%s is %d bytes long without its query string, the limit is %d", f.Key, len(s), f.Max)
	}
	return p.keep(b, v, s), nil
}

func (p *parser) clientIP(b []byte, v val, f *Field) (netip.Addr, *Reject) {
	s, rej := p.text(b, v, f.Key, 0, false)
	if rej != nil || s == nil {
		return netip.Addr{}, rej
	}
	a, err := netip.ParseAddr(string(s))
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, invalid(f.Key, "%s %s is not an IPv4 or IPv6 address", f.Key, p.token(b, v))
	}
	return a.Unmap(), nil
}

func (p *parser) userAgent(b []byte, v val, f *Field) (string, *Reject) {
	s, rej := p.text(b, v, f.Key, 0, false)
	lenient := rej != nil
	if lenient {
		if s, rej = lenientText(b, v, rej); rej != nil {
			return "", rej
		}
	}
	if len(s) > f.Max {
		// A client controls its User-Agent; an over-long one must not
		// cost the record of its call.
		n := f.Max
		for !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n]
	}
	if s == nil {
		return "", nil
	}
	if lenient || p.intern != nil {
		return p.internString(s), nil
	}
	return p.keep(b, v, s), nil
}

// object locates the members of the object field obj for the fields that
// follow it; unknown members are ignored.
func (p *parser) object(b []byte, obj fieldID, v val, m *located) *Reject {
	name := fields[obj].Key
	if v.absent() {
		return nil
	}
	if v.kind != kindObject {
		return invalid(name, "%s must be an object, got %s", name, v.kind)
	}
	mem := newMembers(b, v)
	for {
		k, x, ok := mem.next()
		if !ok {
			return nil
		}
		key, err := p.unquote(b, k)
		if err != nil {
			continue // not a name we know
		}
		id := lookupMember(obj, key)
		if id == fUnknown {
			continue
		}
		if m.f[id].present() {
			return invalid(fields[id].Key, "the key %s appears more than once", fields[id].Key)
		}
		m.f[id] = x
	}
}

func (p *parser) auth(b []byte, v val, f *Field) (string, *Reject) {
	if v.absent() {
		return "", nil
	}
	var s []byte
	if v.kind == kindString {
		var rej *Reject
		if s, rej = p.text(b, v, f.Key, 0, false); rej != nil {
			return "", rej
		}
	}
	switch string(s) {
	case "oauth2":
		return "oauth2", nil
	case "jwt":
		return "jwt", nil
	case "apikey":
		return "apikey", nil
	case "none":
		return "none", nil
	}
	return "", invalid(f.Key, "%s %s must be one of oauth2, jwt, apikey, none", f.Key, p.token(b, v))
}

func (p *parser) scopes(b []byte, v val, f *Field) ([]string, *Reject) {
	switch {
	case v.absent():
		return nil, nil
	case v.kind == kindString:
		// Apigee's scope variables are OAuth scope strings, space-delimited.
		s, rej := p.text(b, v, f.Key, 0, false)
		if rej != nil {
			return nil, rej
		}
		if scopes := strings.Fields(string(s)); len(scopes) > 0 {
			return scopes, nil
		}
		return nil, nil
	case v.kind != kindArray:
		return nil, invalid(f.Key, "%s must be an array of strings or a space-delimited string, got %s", f.Key, v.kind)
	}
	var scopes []string
	e := newElements(b, v)
	for {
		el, ok := e.next()
		if !ok {
			return scopes, nil
		}
		if el.kind != kindString {
			return nil, invalid(f.Key, "%s must hold strings, got %s", f.Key, el.kind)
		}
		s, rej := p.text(b, el, f.Key, 0, false)
		if rej != nil {
			return nil, rej
		}
		if len(s) > 0 {
			scopes = append(scopes, p.internString(s))
		}
	}
}

func (p *parser) attributes(b []byte, v val, f *Field) (map[string]string, *Reject) {
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
		if len(attrs) == f.Max {
			return nil, invalid("attributes", "attributes has more than %d keys", f.Max)
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
