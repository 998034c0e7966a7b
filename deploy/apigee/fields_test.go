package apigee_test

import (
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"apigee-timescale/deploy/local/standin/apigee"
	"apigee-timescale/shared/record"
)

// TestTemplateNamesTheTableKeys holds AM-BuildCallRecord's record template
// to the record's field table: rendered with every field's Apigee variable
// set to that field's key, it must produce exactly the keys the table
// fills from Apigee, each with its own key as value.
func TestTemplateNamesTheTableKeys(t *testing.T) {
	tmpl, err := apigee.LoadTemplate(bundleDir)
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	want := map[string]string{"schema": record.SchemaV1}
	for _, f := range record.Fields() {
		if f.Apigee != "" {
			vars[f.Apigee] = f.Key
			want[f.Key] = f.Key
		}
	}
	out, err := apigee.Render(tmpl, vars)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("rendered template is not JSON: %v\n%s", err, out)
	}
	got := map[string]string{}
	flatten(t, "", doc, got)
	if !maps.Equal(got, want) {
		for _, k := range slices.Sorted(maps.Keys(want)) {
			if got[k] != want[k] {
				t.Errorf("%s: the template renders %q, the field table wants it from %q", k, got[k], want[k])
			}
		}
		for _, k := range slices.Sorted(maps.Keys(got)) {
			if _, ok := want[k]; !ok {
				t.Errorf("%s: in the template, not in the field table (or without its Apigee variable)", k)
			}
		}
	}
}

// flatten names nested members with dotted keys, as the field table does.
func flatten(t *testing.T, prefix string, v map[string]any, out map[string]string) {
	for k, x := range v {
		switch x := x.(type) {
		case map[string]any:
			flatten(t, prefix+k+".", x, out)
		case string:
			out[prefix+k] = x
		default:
			t.Errorf("%s%s: the template renders a %T; every value must be a string", prefix, k, x)
		}
	}
}
