package record

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

func compileSchema(tb testing.TB) *jsonschema.Schema {
	tb.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(JSONSchema))
	if err != nil {
		tb.Fatalf("schema is not JSON: %v", err)
	}
	id, _ := doc.(map[string]any)["$id"].(string)
	if id == "" {
		tb.Fatal("schema has no $id")
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat() // date-time, ipv4, ipv6 are part of the contract
	if err := c.AddResource(id, doc); err != nil {
		tb.Fatal(err)
	}
	sch, err := c.Compile(id) // also validates it against the 2020-12 meta-schema
	if err != nil {
		tb.Fatalf("compiling the schema: %v", err)
	}
	return sch
}

// schemaVerdict is nil when the schema accepts raw.
func schemaVerdict(sch *jsonschema.Schema, raw []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return sch.Validate(inst)
}

func TestSchemaAgreesWithValidatorOnCorpus(t *testing.T) {
	sch := compileSchema(t)
	lim := testLimits()
	counts := map[string]int{}
	for _, dir := range []string{"good", "bad", "bad-go-only"} {
		for _, c := range loadCorpus(t, dir) {
			counts[dir]++
			t.Run(dir+"/"+c.name, func(t *testing.T) {
				r, rej := ParseRecord(c.raw, lim)
				schemaErr := schemaVerdict(sch, c.raw)
				if c.dir == "good" {
					if rej != nil {
						t.Fatalf("Go rejects: %s %s: %s", rej.Reason, rej.Field, rej.Detail)
					}
					if schemaErr != nil {
						t.Fatalf("schema rejects: %v", schemaErr)
					}
					if err := checkRecord(r, lim); err != nil {
						t.Fatal(err)
					}
					return
				}
				if rej == nil {
					t.Fatalf("Go accepts, want %s on %q", c.reason, c.field)
				}
				if rej.Reason != c.reason || rej.Field != c.field {
					t.Errorf("Go rejects with %s on %q (%s), want %s on %q", rej.Reason, rej.Field, rej.Detail, c.reason, c.field)
				}
				if rej.Index != 0 || !bytes.Equal(rej.Raw, c.raw) || rej.Detail == "" {
					t.Errorf("reject = index %d, %d raw bytes, detail %q; want 0, the record, a detail", rej.Index, len(rej.Raw), rej.Detail)
				}
				switch {
				case c.dir == "bad" && schemaErr == nil:
					t.Errorf("schema accepts what Go rejects (%s)", rej.Detail)
				case c.dir == "bad-go-only" && schemaErr != nil:
					t.Errorf("schema now rejects this too (%v): move it to testdata/corpus/bad/", schemaErr)
				}
			})
		}
	}
	// The corpus is the proof; make sure it has not gone missing.
	if counts["good"] < 25 || counts["bad"] < 40 || counts["bad-go-only"] < 10 {
		t.Errorf("corpus too small: %v", counts)
	}
}

// minimalRecord returns a valid record as a map, for tests that vary one field.
func minimalRecord() map[string]any {
	return map[string]any{
		"schema":               SchemaV1,
		"message_id":           "m-1",
		"received_at":          "2025-05-31T12:00:00Z",
		"organization":         "acme",
		"environment":          "prod",
		"apiproxy":             "orders",
		"request_verb":         "GET",
		"request_path":         "/orders",
		"response_status_code": "200",
	}
}

func withField(tb testing.TB, field string, rawJSON string) []byte {
	tb.Helper()
	m := minimalRecord()
	if strings.HasPrefix(field, "identity.") {
		m["identity"] = map[string]json.RawMessage{strings.TrimPrefix(field, "identity."): json.RawMessage(rawJSON)}
	} else {
		m[field] = json.RawMessage(rawJSON)
	}
	b, err := json.Marshal(m)
	if err != nil {
		tb.Fatalf("%s = %s: %v", field, rawJSON, err)
	}
	return b
}

// TestSchemaAgreesWithValidatorOnValues varies one field at a time over
// boundary values, many more than the corpus holds.
func TestSchemaAgreesWithValidatorOnValues(t *testing.T) {
	sch := compileSchema(t)
	lim := testLimits()
	numbers := []string{`0`, `1`, `-0`, `-1`, `599`, `600`, `1.0`, `1.5`, `2e2`, `2E+2`, `1e-2`, `100e-2`, `0.0`,
		`2147483647`, `2147483648`, `9223372036854775807`, `9223372036854775808`, `1e19`, `1e400`, `-1e400`, `1e-400`,
		`""`, `null`, `true`, `false`, `"0"`, `"00"`, `"599"`, `"600"`, `"0599"`, `"000000000000000000000000000000599"`,
		`"2147483647"`, `"2147483648"`, `"02147483647"`, `"9223372036854775807"`, `"9223372036854775808"`,
		`"99999999999999999999"`, `"-1"`, `"+1"`, `"1.0"`, `"1e2"`, `" 1"`, `"1 "`, `"0x10"`, `"١٢"`, `[]`, `{}`, `"\u0032"`}
	strs := func(max int) []string {
		return []string{`""`, `null`, `"a"`, `" "`, `1`, `true`, `[]`, `{}`, `"a\u0000"`, `"\u0000"`, `"\n"`, `"\u0085"`,
			`"é"`, `"` + strings.Repeat("a", max) + `"`, `"` + strings.Repeat("a", max+1) + `"`}
	}
	cases := map[string][]string{
		"schema":               {`"apigee.call.v1"`, `"apigee.call.v2"`, `"APIGEE.CALL.V1"`, `""`, `null`, `1`, `"apigee.call.v1 "`, `"apigee.call.v\u0031"`},
		"message_id":           strs(128),
		"organization":         strs(128),
		"environment":          strs(128),
		"apiproxy":             strs(255),
		"proxy_basepath":       strs(1024),
		"target_host":          strs(255),
		"fault_name":           strs(255),
		"tenant":               strs(128),
		"developer_email":      strs(0)[:13],
		"useragent":            append(strs(0)[:13], `"`+strings.Repeat("é", 600)+`"`),
		"request_verb":         {`"GET"`, `"get"`, `"MKCALENDAR"`, `"G-T"`, `"G T"`, `"GET1"`, `"É"`, `""`, `null`, `1`, `"` + strings.Repeat("A", 32) + `"`, `"` + strings.Repeat("A", 33) + `"`},
		"request_path":         {`"/"`, `"a"`, `"?"`, `"?q"`, `"/?q"`, `"/a?b?c"`, `""`, `null`, `1`, `"/\u0000"`, `"/a?\u0000"`, `"/` + strings.Repeat("p", 2047) + `"`, `"/` + strings.Repeat("p", 2048) + `"`, `"/` + strings.Repeat("p", 2047) + `?` + strings.Repeat("q", 3000) + `"`},
		"response_status_code": numbers,
		"target_response_code": numbers,
		"apiproxy_revision":    numbers,
		"total_response_time":  numbers,
		"target_response_time": numbers,
		"request_size":         numbers,
		"response_size":        numbers,
		"received_at": {`"2025-05-31T12:00:00Z"`, `"2025-05-31T12:00:00.1Z"`, `"2025-05-31T12:00:00.123456789123Z"`, `"2025-05-31T12:00:00+00:00"`,
			`"2025-05-31T12:00:00-00:00"`, `"2025-05-31T12:00:00+23:59"`, `"2025-05-31T12:00:00+24:00"`, `"2025-05-31T12:00:00+01:60"`,
			`"2025-05-31T12:00:00+0100"`, `"2025-05-31T12:00:00.Z"`, `"2025-05-31T24:00:00Z"`, `"2025-05-31T12:60:00Z"`,
			`"2025-13-01T12:00:00Z"`, `"2025-00-01T12:00:00Z"`, `"2025-04-31T12:00:00Z"`, `"2024-02-29T12:00:00Z"`, `"2023-02-29T12:00:00Z"`,
			`"2016-12-31T23:59:60Z"`, `"2017-01-01T00:59:60+01:00"`, `"2016-12-31T22:59:60-01:00"`, `"2016-12-31T23:58:60Z"`,
			`"2025-05-31"`, `"12:00:00Z"`, `"2025-05-31T12:00Z"`, `"2025-05-31T12:00:00"`, `"2025/05/31T12:00:00Z"`, `"2025-05-31T1:00:00Z"`,
			`1748692800000`, `"1748692800000"`, `1748692800000.0`, `1.7486928e12`, `946684800000`, `946684799999`, `1748692800000.5`,
			`-1748692800000`, `""`, `null`, `true`, `"now"`},
		"client_ip": {`"1.2.3.4"`, `"0.0.0.0"`, `"255.255.255.255"`, `"256.1.1.1"`, `"1.2.3"`, `"1.2.3.4.5"`, `"01.2.3.4"`, `"1.2.3.4 "`,
			`"::"`, `"::1"`, `"2001:db8::1"`, `"::ffff:1.2.3.4"`, `"::1.2.3.4"`, `"2001:db8::1%1"`, `"[::1]"`, `"2001:db8:::1"`,
			`"1.2.3.4/24"`, `"localhost"`, `""`, `null`, `1`},
		"is_error":         {`true`, `false`, `"true"`, `"false"`, `"True"`, `"1"`, `1`, `0`, `""`, `null`, `"yes"`},
		"identity":         {`{}`, `null`, `""`, `"x"`, `[]`, `1`, `{"x":1}`},
		"identity.subject": {`"u"`, `""`, `null`, `1`, `"\u0000"`},
		"identity.auth":    {`"oauth2"`, `"jwt"`, `"apikey"`, `"none"`, `""`, `null`, `"JWT"`, `"basic"`, `1`},
		"identity.scopes":  {`"a b"`, `""`, `" "`, `null`, `[]`, `["a"]`, `[""]`, `[null]`, `[1]`, `"a\u0000"`, `["a\u0000"]`, `1`, `{}`},
		"attributes":       {`{}`, `null`, `""`, `{"a":"b"}`, `{"a":""}`, `{"":"b"}`, `{"a":1}`, `{"a":null}`, `{"a":{}}`, `[]`, `"a=b"`, `{"a\u0000":"b"}`, `{"a":"\u0000"}`},
		"x_unknown":        {`1`, `null`, `"s"`, `"\u0000"`, `{"\u0000":1}`, `[[["\u0000"]]]`, `{"a":[1,{"b":"c"}]}`, `1e300`, `-0.5`},
	}
	for field, values := range cases {
		for _, v := range values {
			raw := withField(t, field, v)
			_, rej := ParseRecord(raw, lim)
			schemaErr := schemaVerdict(sch, raw)
			if (rej == nil) != (schemaErr == nil) {
				detail := "accepts"
				if rej != nil {
					detail = "rejects: " + rej.Detail
				}
				t.Errorf("%s = %.80s: Go %s; schema error: %v", field, v, detail, schemaErr)
			}
		}
	}
}

// TestSchemaFieldsMatchValidator: both know the same fields, and both
// require the same ones.
func TestSchemaFieldsMatchValidator(t *testing.T) {
	var doc struct {
		Required   []string                   `json:"required"`
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(JSONSchema, &doc); err != nil {
		t.Fatal(err)
	}
	var props []string
	for k := range doc.Properties {
		props = append(props, k)
	}
	slices.Sort(props)
	goFields := slices.Sorted(slices.Values(topLevelKeys()))
	if !slices.Equal(props, goFields) {
		t.Errorf("schema properties %v\n!= Go fields %v", props, goFields)
	}
	var goRequired []string
	for _, f := range topLevelKeys() {
		m := minimalRecord()
		delete(m, f)
		raw, _ := json.Marshal(m)
		if _, rej := ParseRecord(raw, testLimits()); rej != nil {
			if rej.Reason != ReasonMissingField || rej.Field != f {
				t.Errorf("without %s: %s on %q, want missing_field", f, rej.Reason, rej.Field)
			}
			goRequired = append(goRequired, f)
		}
	}
	slices.Sort(goRequired)
	slices.Sort(doc.Required)
	if !slices.Equal(goRequired, doc.Required) {
		t.Errorf("schema requires %v, Go requires %v", doc.Required, goRequired)
	}
}

// decimalMaxPattern matches strings of digits (leading zeros allowed)
// denoting at most max; the schema's numeric-string patterns come from it.
func decimalMaxPattern(max uint64) string {
	d := fmt.Sprint(max)
	var alts []string
	rep := func(n int) string {
		switch n {
		case 0:
			return ""
		case 1:
			return "[0-9]"
		}
		return fmt.Sprintf("[0-9]{%d}", n)
	}
	if len(d) == 2 {
		alts = append(alts, "[0-9]")
	} else if len(d) > 2 {
		alts = append(alts, fmt.Sprintf("[0-9]{1,%d}", len(d)-1))
	}
	for i := range len(d) {
		c := d[i] - '0'
		if c == 0 {
			continue
		}
		class := "0"
		if c > 1 {
			class = fmt.Sprintf("[0-%d]", c-1)
		}
		alts = append(alts, d[:i]+class+rep(len(d)-i-1))
	}
	alts = append(alts, d)
	return "^0*(?:" + strings.Join(alts, "|") + ")$"
}

func TestDecimalMaxPattern(t *testing.T) {
	// Exhaustive for small maxima, boundaries and random values for large ones.
	rng := rand.New(rand.NewPCG(1, 2))
	for _, max := range []uint64{0, 1, 9, 10, 11, 19, 20, 99, 100, 101, 109, 110, 599, 1000, 1099, 2147483647, 9223372036854775807} {
		re := regexp.MustCompile(decimalMaxPattern(max))
		var try []uint64
		if max < 2000 {
			for n := range 3 * max {
				try = append(try, n)
			}
		}
		try = append(try, max, max+1, max-1, max*10, max/10)
		for range 1000 {
			if max < 1<<62 {
				try = append(try, rng.Uint64N(2*max+2))
			} else {
				try = append(try, rng.Uint64())
			}
		}
		for _, n := range try {
			for _, s := range []string{fmt.Sprint(n), "00" + fmt.Sprint(n)} {
				if got := re.MatchString(s); got != (n <= max) {
					t.Fatalf("max %d: pattern matches %s = %v", max, s, got)
				}
			}
		}
		huge := new(big.Int).Mul(new(big.Int).SetUint64(max+1), big.NewInt(10)).String()
		if re.MatchString(huge) || re.MatchString("") || re.MatchString("-1") || re.MatchString("1.0") {
			t.Fatalf("max %d: pattern matches a non-number or %s", max, huge)
		}
	}
	var doc struct {
		Defs map[string]struct {
			AnyOf []struct {
				Pattern string `json:"pattern"`
			} `json:"anyOf"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(JSONSchema, &doc); err != nil {
		t.Fatal(err)
	}
	for def, max := range map[string]uint64{"status": 599, "int32": 1<<31 - 1, "int64": 1<<63 - 1} {
		if got, want := doc.Defs[def].AnyOf[1].Pattern, decimalMaxPattern(max); got != want {
			t.Errorf("$defs/%s pattern\n %s, want\n %s", def, got, want)
		}
	}
}
