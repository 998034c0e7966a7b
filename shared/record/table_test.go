package record

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// topLevelKeys are the JSON keys of the record object, in table order.
func topLevelKeys() []string {
	var keys []string
	for i, f := range fields {
		if f.Key != "" && parentOf(fieldID(i)) < 0 {
			keys = append(keys, f.Key)
		}
	}
	return keys
}

func TestOptNumsFitTheTable(t *testing.T) {
	var n16, n32, n64, nb int
	for _, f := range fields {
		if f.Column == "" || f.ref == nil {
			continue
		}
		switch f.ref(&Record{}).(type) {
		case **int16:
			n16++
		case **int32:
			n32++
		case **int64:
			n64++
		case **bool:
			nb++
		}
	}
	var n optNums
	if n16 > len(n.i16) || n32 > len(n.i32) || n64 > len(n.i64) || nb > 1 {
		t.Errorf("optNums holds %d/%d/%d/1, the table has %d/%d/%d/%d optional int16/int32/int64/bool fields",
			len(n.i16), len(n.i32), len(n.i64), n16, n32, n64, nb)
	}
}

var update = flag.Bool("update", false, "rewrite FORMAT.md's field table from the field table")

// kindTypes describes each Kind in FORMAT.md.
var kindTypes = map[Kind]string{
	KindSchema:     `string "apigee.call.v1"`,
	KindText:       "string",
	KindMessageID:  "string, no control characters",
	KindTime:       "RFC 3339 string, or epoch ms (number or digits)",
	KindInt:        "integer, or string of digits",
	KindVerb:       "string of letters",
	KindPath:       "string",
	KindIP:         "IPv4 or IPv6 address string",
	KindUserAgent:  "string",
	KindBool:       `true, false, "true", "false"`,
	KindObject:     "object",
	KindAuth:       "oauth2, jwt, apikey or none",
	KindScopes:     "array of strings, or one space-delimited string",
	KindAttributes: "object of strings",
	KindExtra:      "any JSON",
}

func limitText(f Field) string {
	switch {
	case f.Kind == KindInt:
		return fmt.Sprintf("0–%d", f.Max)
	case f.Kind == KindAttributes:
		return fmt.Sprintf("≤ %d keys", f.Max)
	case f.Kind == KindUserAgent:
		return fmt.Sprintf("cut to %d bytes", f.Max)
	case f.Kind == KindExtra:
		return fmt.Sprintf("≤ %d levels deep", maxExtraDepth)
	case f.Max > 0:
		return fmt.Sprintf("≤ %d bytes", f.Max)
	}
	return ""
}

// formatTable renders the field table as FORMAT.md shows it.
func formatTable() string {
	var b strings.Builder
	b.WriteString("| JSON key | Type | Limits | Required | Column | Personal | Apigee variable | Notes |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	code := func(s string) string {
		if s == "" {
			return ""
		}
		return "`" + s + "`"
	}
	for _, f := range fields {
		key := code(f.Key)
		if f.Kind == KindExtra {
			key = "*any other*"
		}
		req := ""
		switch {
		case f.Required:
			req = "yes"
		case f.Default != "":
			req = "no; defaults to " + code(f.Default)
		}
		col := code(f.Column)
		if col != "" {
			col = fmt.Sprintf("%s %s (%d)", col, f.SQLType, f.Ordinal)
		}
		personal := ""
		if f.Personal {
			personal = "yes"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n",
			key, kindTypes[f.Kind], limitText(f), req, col, personal, code(f.Apigee), f.Doc)
	}
	return b.String()
}

const (
	beginFields = "<!-- BEGIN FIELDS: generated from table.go by `go test ./shared/record -run TestFormatDoc -update` -->\n"
	endFields   = "<!-- END FIELDS -->\n"
)

// TestFormatDocMatchesTable keeps FORMAT.md's field list the field table's.
func TestFormatDocMatchesTable(t *testing.T) {
	doc, err := os.ReadFile("FORMAT.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	i, j := strings.Index(s, beginFields), strings.Index(s, endFields)
	if i < 0 || j < i {
		t.Fatalf("FORMAT.md lacks the markers %q … %q", beginFields, endFields)
	}
	want := s[:i+len(beginFields)] + formatTable() + s[j:]
	if *update {
		if err := os.WriteFile("FORMAT.md", []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if s != want {
		t.Errorf("FORMAT.md's field list is stale; run go test ./shared/record -run TestFormatDoc -update")
	}
	for _, f := range fields {
		if kindTypes[f.Kind] == "" {
			t.Errorf("%s: kind %d has no description in kindTypes", f.Key, f.Kind)
		}
	}
}

// TestSchemaMatchesTable holds the JSON Schema to the field table beyond
// what TestSchemaFieldsMatchValidator checks: identity's members, byte
// limits, integer maxima and which fields are marked as personal data.
func TestSchemaMatchesTable(t *testing.T) {
	var doc map[string]any
	d := json.NewDecoder(bytes.NewReader(JSONSchema))
	d.UseNumber() // int64's maximum does not survive a float64
	if err := d.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	props := doc["properties"].(map[string]any)
	defs := doc["$defs"].(map[string]any)
	// resolve follows a property to the definitions it uses: itself, its
	// $ref, and the non-absent branches of its anyOf.
	var resolve func(p map[string]any) []map[string]any
	resolve = func(p map[string]any) []map[string]any {
		out := []map[string]any{p}
		if ref, ok := p["$ref"].(string); ok && ref != "#/$defs/absent" {
			out = append(out, resolve(defs[strings.TrimPrefix(ref, "#/$defs/")].(map[string]any))...)
		}
		if alts, ok := p["anyOf"].([]any); ok {
			for _, a := range alts {
				out = append(out, resolve(a.(map[string]any))...)
			}
		}
		return out
	}
	num := func(ps []map[string]any, key string) int {
		for _, p := range ps {
			if v, ok := p[key].(json.Number); ok {
				n, err := strconv.Atoi(v.String())
				if err != nil {
					t.Fatalf("%s %s: %v", key, v, err)
				}
				return n
			}
		}
		return 0
	}
	personal := map[string]bool{}
	for i, f := range fields {
		if f.Key == "" || f.Kind == KindSchema {
			continue
		}
		top, member, _ := strings.Cut(f.Key, ".")
		personal[top] = personal[top] || f.Personal
		p, _ := props[top].(map[string]any)
		if p == nil {
			t.Errorf("%s: not in the schema's properties", f.Key)
			continue
		}
		if parentOf(fieldID(i)) >= 0 {
			obj := resolve(p)
			var mp map[string]any
			for _, o := range obj {
				if m, ok := o["properties"].(map[string]any); ok {
					mp = m
				}
			}
			if p, _ = mp[member].(map[string]any); p == nil {
				t.Errorf("%s: not in the schema's properties of %s", f.Key, top)
				continue
			}
		}
		switch f.Kind {
		case KindText, KindMessageID:
			if got := num(resolve(p), "maxLength"); got != f.Max {
				t.Errorf("%s: schema maxLength %d, table %d", f.Key, got, f.Max)
			}
		case KindInt:
			if got := num(resolve(p), "maximum"); got != f.Max {
				t.Errorf("%s: schema maximum %d, table %d", f.Key, got, f.Max)
			}
		}
	}
	for top, want := range personal {
		desc, _ := props[top].(map[string]any)["description"].(string)
		if got := strings.Contains(desc, "Personal data."); got != want {
			t.Errorf("%s: schema description says personal data: %v, table: %v", top, got, want)
		}
	}
	// The identity members the schema knows are the table's.
	var members []string
	for _, o := range resolve(props["identity"].(map[string]any)) {
		if m, ok := o["properties"].(map[string]any); ok {
			members = slices.Sorted(maps.Keys(m))
		}
	}
	var want []string
	for i, f := range fields {
		if parentOf(fieldID(i)) >= 0 {
			want = append(want, strings.TrimPrefix(f.Key, "identity."))
		}
	}
	if slices.Sort(want); !slices.Equal(members, want) {
		t.Errorf("schema identity members %v, table %v", members, want)
	}
}

// TestKeyIndexSeparatesFields keeps a key lookup at one comparison: a new
// field whose key shares a slot with another's would still be found, only
// more slowly.
func TestKeyIndexSeparatesFields(t *testing.T) {
	for i, x := range append([]*keyIndex{&topLevel}, memberIndex[:]...) {
		if x != nil && x.linear {
			t.Errorf("index %d: no multiplier tried gives each key a slot of its own; change keyIndex.slot", i)
		}
	}
}

func TestLookup(t *testing.T) {
	for i, f := range fields {
		id := fieldID(i)
		switch p := parentOf(id); {
		case f.Key == "":
		case p < 0:
			if got := lookupField([]byte(f.Key)); got != id {
				t.Errorf("lookupField(%q) = %d, want %d", f.Key, got, id)
			}
		default:
			member := f.Key[len(fields[p].Key)+1:]
			if got := lookupMember(fieldID(p), []byte(member)); got != id {
				t.Errorf("lookupMember(%q, %q) = %d, want %d", fields[p].Key, member, got, id)
			}
			if got := lookupField([]byte(f.Key)); got != fUnknown {
				t.Errorf("lookupField(%q) = %d, want fUnknown: a member is not a top-level field", f.Key, got)
			}
		}
	}
	for _, key := range []string{"", "s", "schemA", "Schema", "schema ", "tenants", "target_response_cod", "target_response_codf", "response_status_code_", "subject", "identity.", "jsonPayload", "a\x00", "\x00", "\x00\x00\x00\x00\x00\x00", "schema\x00\x00"} {
		if got := lookupField([]byte(key)); got != fUnknown {
			t.Errorf("lookupField(%q) = %d (%s), want fUnknown", key, got, fields[got].Key)
		}
	}
	for _, key := range []string{"", "subjec", "Subject", "identity.subject", "schema"} {
		if got := lookupMember(topLevel.lookup([]byte("identity")), []byte(key)); got != fUnknown {
			t.Errorf("lookupMember(identity, %q) = %d, want fUnknown", key, got)
		}
	}
}

func TestKeyIndexLongAndLinear(t *testing.T) {
	keys := func() []keySlot {
		return []keySlot{
			{key: "aaaaaaaaaaaaaaaaXbbbbbbbbbbbb", id: 1}, // longer than keyWords covers
			{key: "ab", id: 2},
			{key: "abcde", id: 3},
			{key: "abcdefghijklmnopqrst", id: 4},
		}
	}
	hashed := newKeyIndex(keys())
	linear := &keyIndex{linear: true, all: keys()}
	for i := range linear.slots {
		linear.slots[i].id = fUnknown
	}
	for name, x := range map[string]*keyIndex{"hashed": hashed, "linear": linear} {
		for key, want := range map[string]fieldID{
			"aaaaaaaaaaaaaaaaXbbbbbbbbbbbb": 1, "aaaaaaaaaaaaaaaaYbbbbbbbbbbbb": fUnknown,
			"ab": 2, "ba": fUnknown, "a": fUnknown, "": fUnknown,
			"abcde": 3, "abcdf": fUnknown, "abcd": fUnknown,
			"abcdefghijklmnopqrst": 4, "abcdefghijklmnopqrsT": fUnknown, "abcdefghiJklmnopqrst": fUnknown,
		} {
			if got := x.lookup([]byte(key)); got != want {
				t.Errorf("%s: lookup(%q) = %d, want %d", name, key, got, want)
			}
		}
	}
}

// TestLayoutMatchesRef holds the decoder's typed pointers (at) to the
// table's ref: the same address and, through the interface, the same type.
func TestLayoutMatchesRef(t *testing.T) {
	r := new(Record)
	for i, f := range fields {
		id := fieldID(i)
		var got any
		switch layout[id].st {
		case stNone:
			if f.ref != nil {
				t.Errorf("%s: has a ref but no layout", f.Key)
			}
			continue
		case stString:
			got = at[string](r, id)
		case stTime:
			got = at[time.Time](r, id)
		case stInt16:
			got = at[int16](r, id)
		case stOptInt16:
			got = at[*int16](r, id)
		case stOptInt32:
			got = at[*int32](r, id)
		case stOptInt64:
			got = at[*int64](r, id)
		case stOptBool:
			got = at[*bool](r, id)
		case stAddr:
			got = at[netip.Addr](r, id)
		case stStrings:
			got = at[[]string](r, id)
		case stStringMap:
			got = at[map[string]string](r, id)
		case stRawMap:
			got = at[map[string]json.RawMessage](r, id)
		}
		if want := f.ref(r); got != want {
			t.Errorf("%s: the decoder writes %T %p, ref returns %T %p", f.Key, got, got, want, want)
		}
	}
}
