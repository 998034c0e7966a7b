package audit

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
)

// AppendCanonicalJSON appends the canonical form of the JSON value j: the
// same for the text ingest sent and for what jsonb gives back, whatever
// jsonb did to it (key order, duplicate keys, whitespace, string escapes,
// number spelling). Objects have their keys sorted bytewise, strings are
// written as encoding/json writes them, numbers as PostgreSQL's numeric
// prints them (1.50e1 is 15.0). Text that is already canonical, as
// encoding/json writes a map, is appended unchanged, so the hashes of such
// rows are those ingest computed before this canonical form existed.
// Invalid JSON, which jsonb would have refused, is appended as it is.
func AppendCanonicalJSON(b, j []byte) []byte {
	d := json.NewDecoder(bytes.NewReader(j))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return append(b, j...)
	}
	return appendJSON(b, v)
}

func appendJSON(b []byte, v any) []byte {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSON(b, k)
			b = append(b, ':')
			b = appendJSON(b, x[k])
		}
		return append(b, '}')
	case []any:
		b = append(b, '[')
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSON(b, e)
		}
		return append(b, ']')
	case json.Number:
		return append(b, numericText(string(x))...)
	default: // string, bool, nil
		s, _ := json.Marshal(x)
		return append(b, s...)
	}
}

// numericText writes a JSON number as PostgreSQL's numeric type prints it:
// plain notation, the scale being the digits after the point minus the
// exponent (never negative), no negative zero.
func numericText(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	mant, exp := s, 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		mant = s[:i]
		e := strings.TrimPrefix(s[i+1:], "+")
		n := 0
		eneg := strings.HasPrefix(e, "-")
		for _, c := range strings.TrimPrefix(e, "-") {
			n = n*10 + int(c-'0')
			if n > 1_000_000 {
				return s // beyond what the record accepts; keep it as it is
			}
		}
		if eneg {
			n = -n
		}
		exp = n
	}
	intPart, frac, _ := strings.Cut(mant, ".")
	digits := intPart + frac
	point := len(intPart) + exp // where the point goes in digits
	scale := max(0, len(frac)-exp)
	var whole, fraction string
	switch {
	case point <= 0:
		whole, fraction = "0", strings.Repeat("0", -point)+digits
	case point >= len(digits):
		whole = digits + strings.Repeat("0", point-len(digits))
	default:
		whole, fraction = digits[:point], digits[point:]
	}
	whole = strings.TrimLeft(whole, "0")
	if whole == "" {
		whole = "0"
	}
	if len(fraction) < scale {
		fraction += strings.Repeat("0", scale-len(fraction))
	}
	fraction = fraction[:scale]
	out := whole
	if scale > 0 {
		out += "." + fraction
	}
	if neg && strings.Trim(whole+fraction, "0") != "" {
		out = "-" + out
	}
	return out
}
