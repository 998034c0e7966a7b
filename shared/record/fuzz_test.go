package record

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

func fuzzLimits() Limits {
	lim := testLimits()
	// Small enough that the fuzzer reaches these limits.
	lim.MaxRecords = 20
	lim.MaxRecordBytes = 16 << 10
	lim.MaxMessageBytes = 256 << 10
	return lim
}

func FuzzParse(f *testing.F) {
	for _, dir := range []string{"good", "bad", "bad-go-only"} {
		for _, c := range loadCorpus(f, dir) {
			// Compact, small seeds keep the fuzzer's minimisation quick.
			var b bytes.Buffer
			if json.Compact(&b, c.raw) == nil {
				c.raw = b.Bytes()
			}
			if len(c.raw) <= 4<<10 {
				f.Add(c.raw)
			}
		}
	}
	for _, s := range []string{
		"", " \n", "[]", "null", "hello", "\ufeff" + rec("a"),
		"[" + rec("a") + "," + noOrg("b") + ",1]",
		rec("a") + "\r\n\r\n" + noOrg("b") + "\n{broken\n" + rec("c"),
		logEntry(rec("a")) + "\n" + logEntry(`{"schema":"apigee.call.v1"}`),
		"[" + logEntry(rec("a")) + "]",
		`{"logName":"l","textPayload":"x"}`,
		"[" + rec("a") + "," + rec("b")[:30],
		strings.Repeat(rec("a")+"\n", 21),
		pretty(rec("a")) + "\n{\n  \"a\":\n" + pretty(rec("b")) + "\n" + rec("c"),
		// An unknown field with characters json.Marshal escapes (CI's fuzzer found
		// the re-encoding of "&" as "\u0026" in the idempotency check).
		strings.Replace(rec("a"), "{", `{"":"&","x<y>":"a\u0026b<c>",`, 1),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := fuzzLimits()
		got := Parse(data, lim)
		checkParsed(t, data, got, lim)
	})
}

func checkParsed(t *testing.T, data []byte, got Parsed, lim Limits) {
	total := len(got.Records) + len(got.Rejects)
	if total == 0 {
		t.Fatalf("no outcome for %q", data)
	}
	for i, rej := range got.Rejects {
		if !slices.Contains(reasons, rej.Reason) {
			t.Fatalf("unknown reason %q", rej.Reason)
		}
		if rej.Detail == "" || !utf8.ValidString(rej.Detail) || len(rej.Detail) > 400 {
			t.Fatalf("bad Detail %q", rej.Detail)
		}
		if !utf8.ValidString(rej.Field) || len(rej.Field) > 80 {
			t.Fatalf("bad Field %q", rej.Field)
		}
		if rej.Index == -1 {
			if total != 1 || !bytes.Equal(rej.Raw, data) {
				t.Fatalf("a whole-message reject comes alone, with the message: %+v", got)
			}
			continue
		}
		if rej.Index < 0 || rej.Index >= total || (i > 0 && rej.Index <= got.Rejects[i-1].Index) {
			t.Fatalf("reject indexes out of order or range: %+v", got.Rejects)
		}
		if len(rej.Raw) == 0 || !bytes.Contains(data, rej.Raw) {
			t.Fatalf("reject Raw %q is not part of the message", rej.Raw)
		}
		// A quarantined record replays to the same verdict.
		_, again := ParseRecord(rej.Raw, lim)
		if again == nil || again.Reason != rej.Reason || again.Field != rej.Field {
			t.Fatalf("Parse rejected %q with %s on %q, ParseRecord says %+v", rej.Raw, rej.Reason, rej.Field, again)
		}
	}
	for _, r := range got.Records {
		if err := checkRecord(r, lim); err != nil {
			t.Fatalf("accepted an invalid record: %v\n%+v", err, r)
		}
		// Normalisation is idempotent: the record, sent again, comes back the same.
		enc := encodeRecord(t, r)
		r2, rej := ParseRecord(enc, lim)
		if rej != nil {
			t.Fatalf("re-validating %s: %s on %s: %s", enc, rej.Reason, rej.Field, rej.Detail)
		}
		if d := diffRecords(r, r2); d != "" {
			t.Fatalf("not idempotent: %s", d)
		}
	}
	// One JSON object: Parse and ParseRecord agree.
	if trimmed := bytes.TrimLeft(data, " \t\r\n"); len(trimmed) > 0 && trimmed[0] == '{' && json.Valid(data) && len(data) <= lim.MaxMessageBytes {
		r, rej := ParseRecord(data, lim)
		switch {
		case total != 1:
			t.Fatalf("one object gave %d outcomes", total)
		case rej == nil && (len(got.Records) != 1 || diffRecords(r, got.Records[0]) != ""):
			t.Fatalf("ParseRecord accepts, Parse gives %+v", got)
		case rej != nil && (len(got.Rejects) != 1 || got.Rejects[0].Reason != rej.Reason || got.Rejects[0].Field != rej.Field):
			t.Fatalf("ParseRecord rejects with %+v, Parse gives %+v", rej, got)
		}
	}
}
