package ingest

import (
	"slices"
	"testing"
	"time"

	"apigee-timescale/shared/audit"
)

// TestStageColumnsAreTheHashOrder: ingest copies and hashes rows in the
// order shared/audit's verifier reads them back.
func TestStageColumnsAreTheHashOrder(t *testing.T) {
	if !slices.Equal(stageColumns, audit.Columns()) {
		t.Fatalf("stage columns %v\nhash columns %v", stageColumns, audit.Columns())
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := testCall("a", "t", now)
	c.PublishTime = now
	rows := &callRows{calls: []Call{c}, batchID: 9}
	rows.Next()
	got, _ := rows.Values()
	want := audit.RowValues(nil, c.Record, &c.PubSubMessageID, &c.PublishTime, 9)
	h1, h2 := audit.NewHasher(9), audit.NewHasher(9)
	h1.Row(got)
	h2.Row(want)
	if h1.Sum() != h2.Sum() {
		t.Fatalf("COPY values %v hash differently from audit.RowValues %v", got, want)
	}
}
