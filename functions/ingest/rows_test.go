package ingest

import (
	"context"
	"slices"
	"testing"

	"apigee-timescale/deploy/local/testkit"
)

// TestStageTableMatchesAPICalls: the staging table built from the field
// table has the columns of apigee.api_calls that ingest writes, in the same
// order and of the same types, so moveSQL's INSERT … SELECT is exact.
func TestStageTableMatchesAPICalls(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		conn := db.AdminConn(t)
		if _, err := conn.Exec(ctx, createStageSQL); err != nil {
			t.Fatalf("%s: %v", createStageSQL, err)
		}
		columns := func(where string) (names, typed []string) {
			rows, err := conn.Query(ctx, `SELECT column_name, udt_name FROM information_schema.columns WHERE `+where+` ORDER BY ordinal_position`)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			for rows.Next() {
				var name, typ string
				if err := rows.Scan(&name, &typ); err != nil {
					t.Fatal(err)
				}
				names, typed = append(names, name), append(typed, name+" "+typ)
			}
			return names, typed
		}
		stageNames, stage := columns(`table_name = 'apigee_stage_calls' AND table_schema = pg_my_temp_schema()::regnamespace::text`)
		_, calls := columns(`table_schema = 'apigee' AND table_name = 'api_calls' AND column_name <> 'ingested_at'`)
		if !slices.Equal(stage, calls) {
			t.Errorf("staging table\n %v\napigee.api_calls\n %v", stage, calls)
		}
		if !slices.Equal(stageNames, stageColumns) {
			t.Errorf("staging table %v, COPY columns %v", stageNames, stageColumns)
		}
	})
}
