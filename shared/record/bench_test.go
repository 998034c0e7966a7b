package record

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
)

// benchRecord is a realistic record as the Apigee template renders it.
func benchRecord(tb testing.TB, i int) []byte {
	tb.Helper()
	var m map[string]any
	if err := json.Unmarshal(readCorpus(tb, "good/apigee_template_strings.json"), &m); err != nil {
		tb.Fatal(err)
	}
	m["message_id"] = fmt.Sprintf("rrt-0b1c2d3e4f5a6b7c8-a-eu-%d-%d-1", 12345+i, 6789012+i*7)
	m["received_at"] = fmt.Sprint(1748694896789 + int64(i)*13)
	m["request_path"] = fmt.Sprintf("/orders/v1/items/%d", i*31%997)
	m["response_status_code"] = []string{"200", "200", "201", "404", "500"}[i%5]
	m["total_response_time"] = fmt.Sprint(20 + i%300)
	m["client_ip"] = fmt.Sprintf("203.0.%d.%d", i%256, (i*7)%256)
	b, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func benchMessages(tb testing.TB) map[string]struct {
	data    []byte
	records int
} {
	var ndjson bytes.Buffer
	for i := range 500 {
		ndjson.Write(benchRecord(tb, i))
		ndjson.WriteByte('\n')
	}
	return map[string]struct {
		data    []byte
		records int
	}{
		"1-record":          {benchRecord(tb, 0), 1},
		"500-record-ndjson": {ndjson.Bytes(), 500},
	}
}

func BenchmarkParse(b *testing.B) {
	lim := testLimits()
	for name, m := range benchMessages(b) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(m.data)))
			b.ReportAllocs()
			for b.Loop() {
				got := Parse(m.data, lim)
				if len(got.Records) != m.records {
					b.Fatalf("%d records, %v", len(got.Records), got.Rejects)
				}
			}
			b.ReportMetric(float64(b.N*m.records)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// BenchmarkBaselineStdlibMap is the yardstick the hand-written scanner is
// measured against: only splitting lines and unmarshalling each record into
// map[string]any, without any validation.
func BenchmarkBaselineStdlibMap(b *testing.B) {
	for name, m := range benchMessages(b) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(m.data)))
			b.ReportAllocs()
			for b.Loop() {
				n := 0
				for line := range bytes.Lines(m.data) {
					var v map[string]any
					if err := json.Unmarshal(line, &v); err != nil {
						b.Fatal(err)
					}
					n++
				}
				if n != m.records {
					b.Fatalf("%d records", n)
				}
			}
			b.ReportMetric(float64(b.N*m.records)/b.Elapsed().Seconds(), "records/s")
		})
	}
}
