package record

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// rec returns a valid one-line record with the given message_id.
func rec(id string) string {
	m := minimalRecord()
	m["message_id"] = id
	b, _ := json.Marshal(m)
	return string(b)
}

// noOrg returns a record without organization (missing_field).
func noOrg(id string) string {
	m := minimalRecord()
	m["message_id"] = id
	delete(m, "organization")
	b, _ := json.Marshal(m)
	return string(b)
}

func logEntry(record string) string {
	return `{"insertId":"i1","logName":"projects/p/logs/apigee","severity":"INFO","jsonPayload":` + record + `}`
}

func pretty(record string) string {
	var v any
	_ = json.Unmarshal([]byte(record), &v)
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

type wantReject struct {
	index         int
	reason, field string
	raw           string
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		lim     func(*Limits)
		records []string // message ids, in order
		rejects []wantReject
	}{
		{name: "single object", data: rec("a"), records: []string{"a"}},
		{name: "single object, BOM and whitespace", data: "\ufeff \r\n\t" + rec("a") + "\n\n", records: []string{"a"}},
		{name: "pretty-printed object", data: pretty(rec("a")), records: []string{"a"}},
		{name: "array", data: "[" + rec("a") + ", " + rec("b") + ",\n" + rec("c") + "]", records: []string{"a", "b", "c"}},
		{name: "pretty-printed array", data: "[\n  " + pretty(rec("a")) + ",\n  " + pretty(rec("b")) + "\n]\n", records: []string{"a", "b"}},
		{name: "ndjson with blank lines and CRLF", data: rec("a") + "\r\n\r\n" + rec("b") + "\r\n" + "   \n" + rec("c"), records: []string{"a", "b", "c"}},
		{name: "concatenated objects", data: rec("a") + rec("b"), records: []string{"a", "b"}},
		{name: "pretty-printed objects in a row", data: pretty(rec("a")) + "\n" + pretty(rec("b")), records: []string{"a", "b"}},
		{name: "arrays and objects mixed", data: "[" + rec("a") + "]\n" + rec("b") + "\n[" + rec("c") + "," + rec("d") + "]", records: []string{"a", "b", "c", "d"}},
		{name: "LogEntry", data: logEntry(rec("a")), records: []string{"a"}},
		{name: "array of LogEntries", data: "[" + logEntry(rec("a")) + "," + logEntry(rec("b")) + "]", records: []string{"a", "b"}},
		{name: "ndjson of LogEntries and records", data: logEntry(rec("a")) + "\n" + rec("b") + "\n" + logEntry(noOrg("c")),
			records: []string{"a", "b"}, rejects: []wantReject{{2, ReasonMissingField, "organization", logEntry(noOrg("c"))}}},
		{name: "ndjson, each record judged on its own",
			data:    rec("a") + "\n" + noOrg("b") + "\n" + `{"schema":"apigee.call.v1", "message_id": ` + "\n" + rec("d") + "\n42\n" + rec("f") + "\n",
			records: []string{"a", "d", "f"},
			rejects: []wantReject{
				{1, ReasonMissingField, "organization", noOrg("b")},
				{2, ReasonNotJSON, "", `{"schema":"apigee.call.v1", "message_id":`},
				{4, ReasonNotJSON, "", "42"},
			}},
		{name: "array, each record judged on its own",
			data:    "[" + rec("a") + "," + noOrg("b") + `,"x",null,` + rec("e") + "]",
			records: []string{"a", "e"},
			rejects: []wantReject{
				{1, ReasonMissingField, "organization", noOrg("b")},
				{2, ReasonNotJSON, "", `"x"`},
				{3, ReasonNotJSON, "", "null"},
			}},
		{name: "unknown schema among good ones",
			data:    rec("a") + "\n" + strings.Replace(rec("b"), SchemaV1, "apigee.call.v2", 1),
			records: []string{"a"},
			rejects: []wantReject{{1, ReasonUnknownSchema, "schema", strings.Replace(rec("b"), SchemaV1, "apigee.call.v2", 1)}}},
		{name: "garbage lines between records",
			data:    "hello\n" + rec("a") + "\n}}}\n  " + rec("b") + "\nbye",
			records: []string{"a", "b"},
			rejects: []wantReject{{0, ReasonNotJSON, "", "hello"}, {2, ReasonNotJSON, "", "}}}"}, {4, ReasonNotJSON, "", "bye"}}},
		{name: "broken pretty-printed object amid ndjson costs one reject",
			data:    rec("a") + "\n{\n  \"schema\": \"apigee.call.v1\",\n  \"message_id\": \"b\"\n  \"x\": 1\n}\n" + rec("c"),
			records: []string{"a", "c"},
			rejects: []wantReject{{1, ReasonNotJSON, "", "{\n  \"schema\": \"apigee.call.v1\",\n  \"message_id\": \"b\"\n  \"x\": 1\n}"}}},
		{name: "truncated array keeps the complete records",
			data:    "[" + rec("a") + "," + rec("b") + `,{"schema":"apigee.ca`,
			records: []string{"a", "b"},
			rejects: []wantReject{{2, ReasonNotJSON, "", `{"schema":"apigee.ca`}}},
		{name: "array missing a comma",
			data:    "[" + rec("a") + " " + rec("b") + "]",
			records: []string{"a"},
			rejects: []wantReject{{1, ReasonNotJSON, "", rec("b") + "]"}}},
		{name: "record too large, the others kept", lim: func(l *Limits) { l.MaxRecordBytes = len(rec("a")) },
			data:    rec("a") + "\n" + rec("bb") + "\n" + rec("c"),
			records: []string{"a", "c"},
			rejects: []wantReject{{1, ReasonRecordTooLarge, "", rec("bb")}}},
		{name: "exactly MaxRecords", lim: func(l *Limits) { l.MaxRecords = 3 },
			data: rec("a") + "\n" + rec("b") + "\n" + rec("c"), records: []string{"a", "b", "c"}},

		// whole-message rejects
		{name: "empty", data: "", rejects: []wantReject{{-1, ReasonEmptyMessage, "", ""}}},
		{name: "whitespace only", data: " \r\n\t\n", rejects: []wantReject{{-1, ReasonEmptyMessage, "", " \r\n\t\n"}}},
		{name: "BOM only", data: "\ufeff", rejects: []wantReject{{-1, ReasonEmptyMessage, "", "\ufeff"}}},
		{name: "empty arrays", data: "[]\n[ ]", rejects: []wantReject{{-1, ReasonEmptyMessage, "", "[]\n[ ]"}}},
		{name: "not JSON at all", data: "hello world", rejects: []wantReject{{-1, ReasonNotJSON, "", "hello world"}}},
		{name: "not JSON, several lines", data: "a\n{b\n[c", rejects: []wantReject{{-1, ReasonNotJSON, "", "a\n{b\n[c"}}},
		{name: "broken pretty-printed object", data: "{\n  \"schema\": \"apigee.call.v1\",\n}\n",
			rejects: []wantReject{{-1, ReasonNotJSON, "", "{\n  \"schema\": \"apigee.call.v1\",\n}\n"}}},
		{name: "truncated array", data: "[" + rec("a")[:40], rejects: []wantReject{{-1, ReasonNotJSON, "", "[" + rec("a")[:40]}}},
		{name: "message too large", lim: func(l *Limits) { l.MaxMessageBytes = 10 }, data: rec("a"),
			rejects: []wantReject{{-1, ReasonMessageTooLarge, "", rec("a")}}},
		{name: "too many records", lim: func(l *Limits) { l.MaxRecords = 2 }, data: rec("a") + "\n" + rec("b") + "\n" + rec("c"),
			rejects: []wantReject{{-1, ReasonTooManyRecords, "", rec("a") + "\n" + rec("b") + "\n" + rec("c")}}},
		{name: "too many records, garbage counts", lim: func(l *Limits) { l.MaxRecords = 2 }, data: "[1,2,3]",
			rejects: []wantReject{{-1, ReasonTooManyRecords, "", "[1,2,3]"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lim := testLimits()
			if tt.lim != nil {
				tt.lim(&lim)
			}
			got := Parse([]byte(tt.data), lim)
			var ids []string
			for _, r := range got.Records {
				ids = append(ids, r.MessageID)
			}
			if !slices.Equal(ids, tt.records) {
				t.Errorf("records %q, want %q", ids, tt.records)
			}
			var rejects []wantReject
			for _, r := range got.Rejects {
				rejects = append(rejects, wantReject{r.Index, r.Reason, r.Field, string(r.Raw)})
				if r.Detail == "" {
					t.Errorf("reject %d has no Detail", r.Index)
				}
			}
			if !slices.Equal(rejects, tt.rejects) {
				t.Errorf("rejects\n %+v\nwant\n %+v", rejects, tt.rejects)
			}
		})
	}
}

// TestParseManyRecords: a full batch at the limits is accepted whole.
func TestParseManyRecords(t *testing.T) {
	var sb strings.Builder
	for i := range 10_000 {
		sb.WriteString(rec(fmt.Sprint(i)))
		sb.WriteByte('\n')
	}
	got := Parse([]byte(sb.String()), testLimits())
	if len(got.Records) != 10_000 || len(got.Rejects) != 0 {
		t.Fatalf("%d records, %d rejects (%v)", len(got.Records), len(got.Rejects), got.Rejects[:min(1, len(got.Rejects))])
	}
	if got.Records[9_999].MessageID != "9999" {
		t.Errorf("last record is %q", got.Records[9_999].MessageID)
	}
	got = Parse([]byte(sb.String()+rec("extra")), testLimits())
	if len(got.Records) != 0 || len(got.Rejects) != 1 || got.Rejects[0].Reason != ReasonTooManyRecords {
		t.Errorf("10,001 records: %d records, rejects %v", len(got.Records), got.Rejects)
	}
}

// TestParseAdversarialInputStaysLinear: error recovery must not rescan the
// input over and over (this took minutes per MiB before recovery was bounded).
func TestParseAdversarialInputStaysLinear(t *testing.T) {
	for _, unit := range []string{"{\"a\":\n", "[\n", "{\n", "[{\"a\":[\n", "{\"a\":\"\n"} {
		data := []byte(strings.Repeat(unit, (1<<20)/len(unit)))
		start := time.Now()
		got := Parse(data, Limits{})
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%q repeated to 1 MiB took %v", unit, d)
		}
		if len(got.Records) != 0 || len(got.Rejects) == 0 {
			t.Errorf("%q: %d records, %d rejects", unit, len(got.Records), len(got.Rejects))
		}
	}
}

// TestBatchReservesAboutWhatItKeeps pins Parse's estimate of a batch's
// records: a message of like records gets one slice that holds them all
// (no doubling), and a tiny first item cannot make it reserve more than
// the floor allows for the message's size.
func TestBatchReservesAboutWhatItKeeps(t *testing.T) {
	var like strings.Builder
	for i := range 600 {
		like.WriteString(rec(fmt.Sprint("like-", i)) + "\n")
	}
	tiny := "{}\n" + strings.Repeat(rec("big")[:len(rec("big"))-1]+`,"pad":"`+strings.Repeat("x", 4000)+`"}`+"\n", 200)
	for _, tc := range []struct {
		name         string
		data         string
		keep         int
		minCap, maxC int
	}{
		{name: "600 like records", data: like.String(), keep: 600, minCap: 600, maxC: 620},
		{name: "a tiny first item", data: tiny, keep: 200, minCap: 200, maxC: len(tiny)/minEstimatedRecordBytes + 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Parse([]byte(tc.data), DefaultLimits())
			if len(p.Records) != tc.keep {
				t.Fatalf("%d records kept, want %d (rejects %v)", len(p.Records), tc.keep, p.Rejects)
			}
			if c := cap(p.Records); c < tc.minCap || c > tc.maxC {
				t.Errorf("cap %d, want %d to %d", c, tc.minCap, tc.maxC)
			}
		})
	}
}
