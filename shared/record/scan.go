package record

import (
	"errors"
	"fmt"
	"unicode/utf16"
	"unicode/utf8"
)

// A hand-written scanner instead of encoding/json: ingest validates every
// record of every message, and locating values as byte spans (decoding only
// what a field needs) is several times cheaper than reflection-based
// unmarshalling. FuzzScanner checks it against json.Valid.

type kind uint8

const (
	kindNone kind = iota // the field is absent
	kindString
	kindNumber
	kindTrue
	kindFalse
	kindNull
	kindObject
	kindArray
)

var kindNames = [...]string{
	kindNone:   "nothing",
	kindString: "a string",
	kindNumber: "a number",
	kindTrue:   "a boolean",
	kindFalse:  "a boolean",
	kindNull:   "null",
	kindObject: "an object",
	kindArray:  "an array",
}

func (k kind) String() string { return kindNames[k] }

// val locates one JSON value in the input; a string's span includes its quotes.
type val struct {
	start, end int
	kind       kind
	esc        bool // string contains backslash escapes
	nonASCII   bool // string contains bytes >= 0x80
}

func (v val) present() bool { return v.kind != kindNone }

// absent reports whether an optional field is to be treated as not sent:
// Apigee renders unresolved template variables as "" and shippers write null.
func (v val) absent() bool {
	return v.kind == kindNone || v.kind == kindNull || (v.kind == kindString && v.end-v.start == 2)
}

type syntaxError struct {
	off int
	msg string
}

func (e *syntaxError) Error() string { return fmt.Sprintf("invalid JSON at byte %d: %s", e.off, e.msg) }

// maxScanDepth matches encoding/json so that the two agree on validity.
const maxScanDepth = 10000

func isWS(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipWS(b []byte, i int) int {
	for i < len(b) && isWS(b[i]) {
		i++
	}
	return i
}

// plain marks string bytes that need no attention from the scanner.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func unexpected(b []byte, i int, what string) *syntaxError {
	if i >= len(b) {
		return &syntaxError{i, "unexpected end of input, " + what}
	}
	c := b[i]
	if c >= 0x20 && c < 0x7f {
		return &syntaxError{i, fmt.Sprintf("unexpected character %q, %s", c, what)}
	}
	return &syntaxError{i, fmt.Sprintf("unexpected byte 0x%02x, %s", c, what)}
}

// scanValue validates the JSON value starting at b[i] and returns its span.
func scanValue(b []byte, i, depth int) (val, *syntaxError) {
	if i >= len(b) {
		return val{}, unexpected(b, i, "expected a value")
	}
	switch c := b[i]; {
	case c == '"':
		return scanString(b, i)
	case c == '{':
		return scanObject(b, i, depth+1)
	case c == '[':
		return scanArray(b, i, depth+1)
	case c == 't':
		return scanLiteral(b, i, "true", kindTrue)
	case c == 'f':
		return scanLiteral(b, i, "false", kindFalse)
	case c == 'n':
		return scanLiteral(b, i, "null", kindNull)
	case c == '-' || (c >= '0' && c <= '9'):
		return scanNumber(b, i)
	}
	return val{}, unexpected(b, i, "expected a value")
}

func scanLiteral(b []byte, i int, lit string, k kind) (val, *syntaxError) {
	for j := 0; j < len(lit); j++ {
		if i+j >= len(b) || b[i+j] != lit[j] {
			return val{}, unexpected(b, i+j, "expected "+lit)
		}
	}
	return val{start: i, end: i + len(lit), kind: k}, nil
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func scanString(b []byte, i int) (val, *syntaxError) {
	v := val{start: i, kind: kindString}
	i++
	for {
		for i < len(b) && plain[b[i]] {
			i++
		}
		if i >= len(b) {
			return val{}, &syntaxError{i, "unterminated string"}
		}
		switch c := b[i]; {
		case c == '"':
			v.end = i + 1
			return v, nil
		case c == '\\':
			v.esc = true
			if i+1 >= len(b) {
				return val{}, &syntaxError{i + 1, "unterminated string"}
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for j := i + 2; j < i+6; j++ {
					if j >= len(b) || !isHex(b[j]) {
						return val{}, unexpected(b, j, "expected four hex digits after \\u")
					}
				}
				i += 6
			default:
				return val{}, unexpected(b, i+1, "invalid escape in string")
			}
		case c < 0x20:
			return val{}, &syntaxError{i, fmt.Sprintf("control character 0x%02x in string", c)}
		default: // >= 0x80; UTF-8 validity is judged per field, not here
			v.nonASCII = true
			i++
		}
	}
}

func scanDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

func scanNumber(b []byte, i int) (val, *syntaxError) {
	start := i
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = scanDigits(b, i+1)
	default:
		return val{}, unexpected(b, i, "expected a digit")
	}
	if i < len(b) && b[i] == '.' {
		j := scanDigits(b, i+1)
		if j == i+1 {
			return val{}, unexpected(b, j, "expected a digit after the decimal point")
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := scanDigits(b, i)
		if j == i {
			return val{}, unexpected(b, j, "expected a digit in the exponent")
		}
		i = j
	}
	return val{start: start, end: i, kind: kindNumber}, nil
}

func scanObject(b []byte, i, depth int) (val, *syntaxError) {
	if depth > maxScanDepth {
		return val{}, &syntaxError{i, "nesting too deep"}
	}
	start := i
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return val{start: start, end: i + 1, kind: kindObject}, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return val{}, unexpected(b, i, "expected a string key")
		}
		k, err := scanString(b, i)
		if err != nil {
			return val{}, err
		}
		i = skipWS(b, k.end)
		if i >= len(b) || b[i] != ':' {
			return val{}, unexpected(b, i, "expected ':' after an object key")
		}
		v, err := scanValue(b, skipWS(b, i+1), depth)
		if err != nil {
			return val{}, err
		}
		i = skipWS(b, v.end)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i < len(b) && b[i] == '}' {
			return val{start: start, end: i + 1, kind: kindObject}, nil
		}
		return val{}, unexpected(b, i, "expected ',' or '}' in an object")
	}
}

func scanArray(b []byte, i, depth int) (val, *syntaxError) {
	if depth > maxScanDepth {
		return val{}, &syntaxError{i, "nesting too deep"}
	}
	start := i
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == ']' {
		return val{start: start, end: i + 1, kind: kindArray}, nil
	}
	for {
		v, err := scanValue(b, i, depth)
		if err != nil {
			return val{}, err
		}
		i = skipWS(b, v.end)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i < len(b) && b[i] == ']' {
			return val{start: start, end: i + 1, kind: kindArray}, nil
		}
		return val{}, unexpected(b, i, "expected ',' or ']' in an array")
	}
}

// skipChecked returns the span of the value at b[i], which scanValue has
// already validated, so it only needs to find the end.
func skipChecked(b []byte, i int) val {
	v := val{start: i}
	switch c := b[i]; {
	case c == '"':
		v.kind = kindString
		i++
		for {
			for plain[b[i]] {
				i++
			}
			switch b[i] {
			case '"':
				v.end = i + 1
				return v
			case '\\':
				v.esc = true
				i += 2
			default:
				v.nonASCII = true
				i++
			}
		}
	case c == '{' || c == '[':
		if c == '{' {
			v.kind = kindObject
		} else {
			v.kind = kindArray
		}
		depth := 0
		for {
			switch b[i] {
			case '{', '[':
				depth++
				i++
			case '}', ']':
				depth--
				i++
				if depth == 0 {
					v.end = i
					return v
				}
			case '"':
				i = skipChecked(b, i).end
			default:
				i++
			}
		}
	case c == 't':
		v.kind, v.end = kindTrue, i+4
	case c == 'f':
		v.kind, v.end = kindFalse, i+5
	case c == 'n':
		v.kind, v.end = kindNull, i+4
	default:
		v.kind = kindNumber
		for i < len(b) && (b[i] >= '0' && b[i] <= '9' || b[i] == '-' || b[i] == '+' || b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
			i++
		}
		v.end = i
	}
	return v
}

// members iterates over the key/value pairs of a validated object.
type members struct {
	b []byte
	i int
}

func newMembers(b []byte, obj val) members { return members{b: b, i: obj.start + 1} }

func (m *members) next() (key, value val, ok bool) {
	i := skipWS(m.b, m.i)
	if m.b[i] == ',' {
		i = skipWS(m.b, i+1)
	}
	if m.b[i] == '}' {
		return val{}, val{}, false
	}
	key = skipChecked(m.b, i)
	i = skipWS(m.b, key.end) // at ':'
	value = skipChecked(m.b, skipWS(m.b, i+1))
	m.i = value.end
	return key, value, true
}

// elements iterates over the values of a validated array.
type elements struct {
	b []byte
	i int
}

func newElements(b []byte, arr val) elements { return elements{b: b, i: arr.start + 1} }

func (e *elements) next() (value val, ok bool) {
	i := skipWS(e.b, e.i)
	if e.b[i] == ',' {
		i = skipWS(e.b, i+1)
	}
	if e.b[i] == ']' {
		return val{}, false
	}
	value = skipChecked(e.b, i)
	e.i = value.end
	return value, true
}

var (
	errUTF8      = errors.New("is not valid UTF-8")
	errNUL       = errors.New(`contains a NUL character (\u0000), which PostgreSQL cannot store`)
	errSurrogate = errors.New("contains an unpaired UTF-16 surrogate escape, which is not valid Unicode")
)

func hex4(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// unquote returns the content of the validated string v, decoded into buf
// when it has escapes (otherwise it aliases b). Content that PostgreSQL text
// or jsonb cannot hold (invalid UTF-8, NUL, lone surrogates) is an error.
func unquote(b []byte, v val, buf []byte) (out, nbuf []byte, err error) {
	raw := b[v.start+1 : v.end-1]
	if v.nonASCII && !utf8.Valid(raw) {
		return nil, buf, errUTF8
	}
	if !v.esc {
		return raw, buf, nil
	}
	buf = buf[:0]
	for i := 0; i < len(raw); {
		if raw[i] != '\\' {
			j := i + 1
			for j < len(raw) && raw[j] != '\\' {
				j++
			}
			buf = append(buf, raw[i:j]...)
			i = j
			continue
		}
		c := raw[i+1]
		i += 2
		switch c {
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r := hex4(raw[i:])
			i += 4
			switch {
			case r == 0:
				return nil, buf, errNUL
			case r >= 0xDC00 && r <= 0xDFFF:
				return nil, buf, errSurrogate
			case r >= 0xD800 && r <= 0xDBFF:
				if i+6 > len(raw) || raw[i] != '\\' || raw[i+1] != 'u' {
					return nil, buf, errSurrogate
				}
				lo := hex4(raw[i+2:])
				if lo < 0xDC00 || lo > 0xDFFF {
					return nil, buf, errSurrogate
				}
				r = utf16.DecodeRune(r, lo)
				i += 6
			}
			buf = utf8.AppendRune(buf, r)
		default: // '"', '\\', '/'
			buf = append(buf, c)
		}
	}
	return buf, buf, nil
}
