package functions_test

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"apigee-timescale/functions/ingest"
	"apigee-timescale/functions/readers"
	"apigee-timescale/functions/rollup"
	"apigee-timescale/functions/rotate"
	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/env"
)

// declared lists every variable the functions read, with its default, as
// the code declares them: each configuration is read from an empty
// environment, and the Reader records what it was asked for.
func declared(t *testing.T) map[string]string {
	t.Helper()
	r := env.Map(nil)
	// Errors are expected: an empty environment names no database or
	// secret. Only the record matters here.
	_, _ = ingest.ConfigFrom(r)
	_, _ = rollup.ConfigFrom(r)
	_, _ = rotate.ConfigFrom(r)
	_, _ = readers.ConfigFrom(r)
	_, _ = dbconn.ConfigFrom(r)
	vars := map[string]string{}
	for _, v := range r.Vars() {
		vars[v.Name] = v.Default
	}
	return vars
}

// documentRow is a row of a configuration table whose first cell is one
// variable: | `NAME` | meaning | default |
var documentRow = regexp.MustCompile("^\\| `([A-Z][A-Z0-9_]*)` \\|.*\\| *([^|]*?) *\\|$")

// documented parses the README's configuration tables: variable → default.
func documented(t *testing.T, readme string) map[string]string {
	t.Helper()
	_, section, ok := strings.Cut(readme, "\n## Configuration\n")
	if !ok {
		t.Fatal("README has no ## Configuration section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	vars := map[string]string{}
	for _, line := range strings.Split(section, "\n") {
		m := documentRow.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		if _, dup := vars[m[1]]; dup {
			t.Errorf("README documents %s twice", m[1])
		}
		vars[m[1]] = strings.Trim(m[2], "`")
	}
	return vars
}

// TestREADMEConfiguration fails when the README's configuration tables and
// the declarations in the code disagree on a variable's name or default.
func TestREADMEConfiguration(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	doc, code := documented(t, string(b)), declared(t)
	if len(code) < 40 {
		t.Fatalf("only %d variables declared: the record of reads is not working", len(code))
	}
	names := make([]string, 0, len(code)+len(doc))
	for n := range code {
		names = append(names, n)
	}
	for n := range doc {
		if _, ok := code[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		d, inDoc := doc[n]
		c, inCode := code[n]
		switch {
		case !inDoc:
			t.Errorf("%s (default %q) is read by the code but not in the README's configuration tables", n, c)
		case !inCode:
			t.Errorf("%s is in the README's configuration tables but no function reads it", n)
		case d != c:
			t.Errorf("%s: README says the default is %q, the code declares %q", n, d, c)
		}
	}
}

// The README check itself must see a difference: a table parsed from a
// README with a changed default, a missing row and an extra row.
func TestREADMEConfigurationCheckSeesDifferences(t *testing.T) {
	readme := "# x\n\n## Configuration\n\n| variable | meaning | default |\n|---|---|---|\n" +
		"| `INGEST_FLUSHERS` | concurrent batch transactions | `3` |\n" +
		"| `PUSH_AUDIENCE` | audience | |\n" +
		"\n## Next\n\n| `NOT_CONFIG` | elsewhere | `1` |\n"
	doc := documented(t, readme)
	if len(doc) != 2 || doc["INGEST_FLUSHERS"] != "3" || doc["PUSH_AUDIENCE"] != "" {
		t.Fatalf("parsed %v, want the two rows of the Configuration section", doc)
	}
	if code := declared(t); code["INGEST_FLUSHERS"] == doc["INGEST_FLUSHERS"] {
		t.Fatalf("declared default of INGEST_FLUSHERS is %q: the check would not see the change", code["INGEST_FLUSHERS"])
	}
}
