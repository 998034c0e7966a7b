package audit_test

import (
	"context"
	"testing"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/audit"
)

// TestCanonicalJSONSurvivesJSONB: the canonical form of what ingest sends
// equals that of what jsonb gives back, so verify recomputes the hash
// ingest stored.
func TestCanonicalJSONSurvivesJSONB(t *testing.T) {
	inputs := []string{
		`{"k":[1,2.50]}`,
		`{"bb":1,"a":{"zz":null,"y":[true,false]},"a":"dup"}`,
		`{"n":[1e2,1.50e1,-0,-0.0,0.001,1E-3,12.3400e-2,-5,1e+3,123456789012345678901234567890]}`,
		`{"s":"\u0041\/<&>\u2028 é \"q\" \\ \t"}`,
		`{"deep":{"b":{"d":1,"c":[{"y":2,"x":1}]},"a":[]}, "e":{}}`,
	}
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		for _, in := range inputs {
			var stored []byte
			if err := db.Admin.QueryRow(context.Background(), "SELECT convert_to($1::jsonb::text, 'UTF8')", in).Scan(&stored); err != nil {
				t.Fatalf("%s: %v", in, err)
			}
			a, b := audit.AppendCanonicalJSON(nil, []byte(in)), audit.AppendCanonicalJSON(nil, stored)
			if string(a) != string(b) {
				t.Errorf("canonical(%s) = %s\ncanonical(jsonb %s) = %s", in, a, stored, b)
			}
		}
	})
}

// TestCanonicalJSONKeepsGoMaps: JSON as encoding/json writes a map is
// already canonical, so hashes stored before the canonical form existed
// still verify.
func TestCanonicalJSONKeepsGoMaps(t *testing.T) {
	for _, in := range []string{`{"a":"2","z":"1"}`, `{"x_new":{"k":[1,2.50]}}`, `{"a":"\u003c\u0026\u003e","ab":"x","b":"y"}`} {
		if got := string(audit.AppendCanonicalJSON(nil, []byte(in))); got != in {
			t.Errorf("canonical(%s) = %s", in, got)
		}
	}
}

func TestSealChains(t *testing.T) {
	b := audit.Batch{ID: 1, Inserted: 2, RowsSHA256: make([]byte, 32)}
	s1 := audit.Seal([32]byte{}, b)
	if s1 == audit.Seal([32]byte{1}, b) {
		t.Fatal("seal ignores the previous seal")
	}
	b2 := b
	b2.Duplicates = 1
	if s1 == audit.Seal([32]byte{}, b2) {
		t.Fatal("seal ignores the counts")
	}
}
