package ingest

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/copybinary"
	"apigee-timescale/shared/record"
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

// TestCopyRowsMatchesPgx: the staging table holds the same rows, to the
// text of every value, whether copyRows or pgx's CopyFrom encoded them, for
// rows with every column set (IPv4, IPv6 and IPv4-mapped addresses, quotes
// and commas in scopes, non-ASCII text and JSON, nanoseconds) and rows with
// every optional column NULL.
func TestCopyRowsMatchesPgx(t *testing.T) {
	at := time.Date(2026, 11, 30, 23, 59, 59, 123456789, time.UTC)
	full := []string{`"apiproxy_revision":"7"`, `"proxy_basepath":"/orders"`, `"target_response_code":"502"`,
		`"target_response_time":"12"`, `"request_size":"0"`, `"response_size":"9223372036854775807"`,
		`"useragent":"okhttp/4.12.0 \"q\" é"`, `"target_host":"backend.internal"`, `"fault_name":"TargetTimeout"`,
		`"is_error":"true"`, `"developer_app":"app-3"`, `"developer_email":"dev@example.com"`, `"api_product":"gold"`,
		`"client_id":"abc"`, `"attributes":{"k":"v","ü":"é"}`, `"unknown":{"z":1,"a":[1,2.5,"x"]}`,
		`"identity":{"subject":"user-1","issuer":"https://issuer.example","email":"u@example.com","auth":"oauth2","scopes":["read","write \"x\"","a,b","{}",""]}`}
	var calls []Call
	for i, extra := range [][]string{
		append([]string{`"client_ip":"203.0.113.7"`, `"forwarded_client_ip":"2001:db8::1"`}, full...),
		append([]string{`"client_ip":"::ffff:198.51.100.1"`, `"is_error":false`}, full[:3]...),
		{`"client_ip":"2001:db8::7"`, `"identity":{"scopes":[]}`},
		nil,
	} {
		r, rej := record.ParseRecord([]byte(rec(fmt.Sprint("copy-", i), at.Add(time.Duration(i)*time.Hour), extra...)), record.DefaultLimits())
		if rej != nil {
			t.Fatalf("record %d: %v", i, rej)
		}
		c := Call{Record: &r, PubSubMessageID: fmt.Sprint("m", i)}
		if i%2 == 0 {
			c.PublishTime = at.Add(-time.Duration(i) * time.Nanosecond)
		}
		calls = append(calls, c)
	}
	vals := rowValues(-42, calls)
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		conn := db.AdminConn(t)
		if _, err := conn.Exec(ctx, createStageSQL); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "CREATE TEMP TABLE stage_pgx (LIKE apigee_stage_calls)"); err != nil {
			t.Fatal(err)
		}
		var cw copybinary.Writer
		cw.Reset(nil)
		if err := copyRows(&cw, vals); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(cw.Finish()), copyStageSQL); err != nil {
			t.Fatalf("copyRows' stream: %v", err)
		}
		if _, err := conn.CopyFrom(ctx, pgx.Identifier{"stage_pgx"}, stageColumns, pgx.CopyFromRows(vals)); err != nil {
			t.Fatal(err)
		}
		text := func(table string) []string {
			rows, err := conn.Query(ctx, "SELECT t::text FROM "+table+" AS t ORDER BY message_id")
			if err != nil {
				t.Fatal(err)
			}
			got, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			return got
		}
		ours, theirs := text("apigee_stage_calls"), text("stage_pgx")
		if len(ours) != len(calls) {
			t.Fatalf("%d rows copied, want %d", len(ours), len(calls))
		}
		for i := range ours {
			if ours[i] != theirs[i] {
				t.Errorf("row %d\ncopyRows %s\npgx      %s", i, ours[i], theirs[i])
			}
		}
	})
}

// TestCopyRowsRefusesAValueOfTheWrongType: a value RowValues would never
// give for its column's type is an error, not a stream the server would
// misread.
func TestCopyRowsRefusesAValueOfTheWrongType(t *testing.T) {
	r, rej := record.ParseRecord([]byte(rec("wrong", time.Now())), record.DefaultLimits())
	if rej != nil {
		t.Fatal(rej)
	}
	vals := rowValues(1, []Call{{Record: &r}})
	for _, tc := range []struct {
		column string
		v      any
	}{{"batch_id", int32(1)}, {"received_at", "2026-01-01"}, {"response_status_code", int64(200)}, {"client_ip", netip.Addr{}}} {
		t.Run(tc.column, func(t *testing.T) {
			row := slices.Clone(vals[0])
			row[slices.Index(stageColumns, tc.column)] = tc.v
			var cw copybinary.Writer
			cw.Reset(nil)
			if err := copyRows(&cw, [][]any{row}); err == nil {
				t.Errorf("%T in %s: no error", tc.v, tc.column)
			}
		})
	}
}

// TestCopyRowsAllocatesNothing: encoding a batch's rows into a buffer that
// is large enough allocates nothing, which is why it replaced pgx's
// CopyFrom (31 allocations a row).
func TestCopyRowsAllocatesNothing(t *testing.T) {
	var calls []Call
	for i := range 50 {
		r, rej := record.ParseRecord([]byte(rec(fmt.Sprint("alloc-", i), time.Now(), `"client_ip":"203.0.113.7"`,
			`"attributes":{"k":"v"}`, `"identity":{"subject":"u","scopes":["read","write"]}`, `"is_error":true`)), record.DefaultLimits())
		if rej != nil {
			t.Fatal(rej)
		}
		calls = append(calls, Call{Record: &r, PubSubMessageID: "m", PublishTime: time.Now()})
	}
	vals := rowValues(123456, calls)
	buf := make([]byte, 0, 1<<20)
	var cw copybinary.Writer
	if n := testing.AllocsPerRun(20, func() {
		cw.Reset(buf)
		if err := copyRows(&cw, vals); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("copyRows allocated %v times for %d rows", n, len(calls))
	}
}
