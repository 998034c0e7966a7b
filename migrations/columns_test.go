package migrations_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/record"
)

// udtNames spells the field table's SQL types as information_schema does.
var udtNames = map[string]string{
	"text": "text", "smallint": "int2", "integer": "int4", "bigint": "int8", "inet": "inet",
	"boolean": "bool", "timestamptz": "timestamptz", "text[]": "_text", "jsonb": "jsonb",
}

type column struct {
	Ordinal int
	Name    string
	Type    string
	NotNull bool
}

// TestAPICallsMatchesTheFieldTable holds migration 00002 to the record's
// field table (shared/record/table.go): every stored field has its column
// at its ordinal, with its type and nullability, and api_calls has no
// other column than the message's own.
func TestAPICallsMatchesTheFieldTable(t *testing.T) {
	var want []column
	first := 0 // columns of the first revision, which 00002 created
	for _, f := range record.Columns() {
		typ, ok := udtNames[f.SQLType]
		if !ok {
			t.Fatalf("field %s: SQL type %q missing from udtNames", f.Key, f.SQLType)
		}
		want = append(want, column{f.Ordinal, f.Column, typ, f.NotNull()})
		if f.Added == 0 {
			first++
		}
	}
	// Filled by ingest from the Pub/Sub message and the batch, not the
	// record; 00002 put them after the record's columns, and later
	// migrations add record columns after them.
	want = append(want,
		column{first + 1, "pubsub_message_id", "text", false},
		column{first + 2, "publish_time", "timestamptz", false},
		column{first + 3, "ingested_at", "timestamptz", true},
		column{first + 4, "batch_id", "int8", true})
	slices.SortFunc(want, func(a, b column) int { return a.Ordinal - b.Ordinal })
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		rows, err := db.Admin.Query(context.Background(), `
			SELECT ordinal_position, column_name, udt_name, is_nullable = 'NO'
			FROM information_schema.columns
			WHERE table_schema = 'apigee' AND table_name = 'api_calls'
			ORDER BY ordinal_position`)
		if err != nil {
			t.Fatal(err)
		}
		var got []column
		for rows.Next() {
			var c column
			if err := rows.Scan(&c.Ordinal, &c.Name, &c.Type, &c.NotNull); err != nil {
				t.Fatal(err)
			}
			got = append(got, c)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			for i := range max(len(got), len(want)) {
				g, w := "(none)", "(none)"
				if i < len(got) {
					g = fmt.Sprint(got[i])
				}
				if i < len(want) {
					w = fmt.Sprint(want[i])
				}
				if g != w {
					t.Errorf("column %d: migration has %s, the field table wants %s", i+1, g, w)
				}
			}
		}
	})
}
