package record

import (
	"bytes"
	"encoding/json"
	"math"
	"math/big"
	"reflect"
	"strings"
	"testing"
)

// toAny decodes a validated value through the scanner's iterators, the way
// encoding/json would (UseNumber, last duplicate key wins). ok is false when
// unquote refuses a string that encoding/json would repair.
func toAny(b []byte, v val) (x any, ok bool) {
	switch v.kind {
	case kindString:
		s, _, err := unquote(b, v, nil)
		return string(s), err == nil
	case kindNumber:
		return json.Number(b[v.start:v.end]), true
	case kindTrue:
		return true, true
	case kindFalse:
		return false, true
	case kindNull:
		return nil, true
	case kindArray:
		out := []any{}
		e := newElements(b, v)
		for {
			el, more := e.next()
			if !more {
				return out, true
			}
			x, ok := toAny(b, el)
			if !ok {
				return nil, false
			}
			out = append(out, x)
		}
	case kindObject:
		out := map[string]any{}
		m := newMembers(b, v)
		for {
			k, el, more := m.next()
			if !more {
				return out, true
			}
			key, ok1 := toAny(b, k)
			x, ok2 := toAny(b, el)
			if !ok1 || !ok2 {
				return nil, false
			}
			out[key.(string)] = x
		}
	}
	panic("unreachable")
}

func checkScanner(t *testing.T, b []byte) {
	i := skipWS(b, 0)
	v, err := scanValue(b, i, 0)
	ok := err == nil && skipWS(b, v.end) == len(b)
	if ok != json.Valid(b) {
		t.Fatalf("scanner says valid=%v (%v), json.Valid says %v, for %q", ok, err, !ok, b)
	}
	if !ok {
		return
	}
	if s := skipChecked(b, i); s != v {
		t.Fatalf("skipChecked = %+v, scanValue = %+v", s, v)
	}
	got, decodable := toAny(b, v)
	if decodable {
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		var want any
		if err := d.Decode(&want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("decoded %#v, encoding/json %#v", got, want)
		}
	}
	if v.kind == kindNumber {
		checkJSONUint(t, b[v.start:v.end])
	}
}

func checkJSONUint(t *testing.T, tok []byte) {
	if e := bytes.IndexAny(tok, "eE"); e >= 0 && len(strings.TrimLeft(string(tok[e+1:]), "+-0")) > 3 {
		return // big.Rat would take too long on a huge exponent
	}
	r, ok := new(big.Rat).SetString(string(tok))
	if !ok {
		t.Fatalf("big.Rat cannot parse %s", tok)
	}
	got, e := jsonUint(tok)
	var want numErr
	switch {
	case !r.IsInt():
		want = numNotInteger
	case r.Sign() < 0:
		want = numNegative
	case r.Num().Cmp(new(big.Int).SetUint64(math.MaxUint64)) > 0:
		want = numTooLarge
	}
	if e != want || (want == numOK && got != r.Num().Uint64()) {
		t.Fatalf("jsonUint(%s) = %d, %d; want %s, %d", tok, got, e, r.RatString(), want)
	}
}

func FuzzScanner(f *testing.F) {
	for _, s := range []string{`{}`, `[]`, `""`, `0`, `-0.0e+0`, `1E400`, `true`, `null`, ` {"a" : [1, "b\u00e9\ud83d\ude00\n", {"c":null}], "a": false} `,
		`{"a":1,}`, `[1 2]`, `"\ud800"`, `"\u0000"`, "\"\xff\"", `01`, `1.`, `.5`, `-`, `"\x"`, `[[[[[]]]]]`, `{"a"}`, `tru`, `"` + "\t" + `"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(checkScanner)
}

func TestScannerTable(t *testing.T) {
	for _, s := range []string{`{}`, `{"a":[1,2,{"b":"c\"d"}],"e":"\u00e9"}`, `"\ud83d\ude00"`, `123.5e-7`, ` [ ] `,
		`{"a":1,}`, `[1,]`, `{'a':1}`, `"a` + "\n" + `"`, `NaN`, `+1`, `01`, `1.e5`, `{"a" 1}`, `[1 2]`, `{} {}`, `"\u12"`,
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001), strings.Repeat("[", 10000) + strings.Repeat("]", 10000)} {
		checkScanner(t, []byte(s))
	}
}

func TestUnquoteRefusesWhatPostgresCannotStore(t *testing.T) {
	for in, want := range map[string]error{
		`"a\u0000b"`:           errNUL,
		`"\ud800"`:             errSurrogate,
		`"\udc00\ud800"`:       errSurrogate,
		`"\ud800\u0041"`:       errSurrogate,
		`"\ud800x"`:            errSurrogate,
		"\"\xc3\x28\"":         errUTF8,
		"\"\xed\xa0\x80\"":     errUTF8, // a surrogate encoded in UTF-8
		`"\ud83d\ude00"`:       nil,
		`"\\u0000"`:            nil, // a backslash and "u0000"
		"\"\u00e9\\n\\u0001\"": nil,
	} {
		b := []byte(in)
		v, serr := scanValue(b, 0, 0)
		if serr != nil {
			t.Fatalf("%s: %v", in, serr)
		}
		if _, _, err := unquote(b, v, nil); err != want {
			t.Errorf("unquote(%s) = %v, want %v", in, err, want)
		}
	}
}
