package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/functions/ingest"
	"apigee-timescale/functions/rollup"
	"apigee-timescale/shared/record"
)

// TestVerifyCommand: exit 0 on an untouched database, exit 1 naming the
// batch after a one-row UPDATE by the owner, exit 1 when the chain no
// longer passes through a logged head.
func TestVerifyCommand(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		_, dsn := db.Login(t, "apigee_ingest")
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		w := ingest.NewWriter(pool)
		var last int64
		for i := range 3 {
			at := time.Now().UTC().Truncate(time.Millisecond)
			res, err := w.Write(ctx, &ingest.Batch{Messages: 1, Calls: []ingest.Call{{Record: &record.Record{
				MessageID: fmt.Sprintf("m%d", i), ReceivedAt: at, Organization: "org", Environment: "prod",
				APIProxy: "p", RequestVerb: "GET", RequestPath: "/", ResponseStatusCode: 200, Tenant: "t",
			}}}})
			if err != nil {
				t.Fatal(err)
			}
			last = res.BatchID
		}
		_, rdsn := db.Login(t, "apigee_rollup")
		rpool, err := pgxpool.New(ctx, rdsn)
		if err != nil {
			t.Fatal(err)
		}
		defer rpool.Close()
		sum, err := rollup.NewRunner(rpool, rollup.DefaultConfig(), nil).Run(ctx)
		if err != nil || sum.SealHead == nil {
			t.Fatalf("rollup: %v, head %+v", err, sum.SealHead)
		}
		head := fmt.Sprintf("%d:%s", sum.SealHead.BatchID, sum.SealHead.Seal)
		t.Setenv("DATABASE_URL", db.URL)

		code, out := runVerify(t, "-head", head)
		if code != exitIntact || !strings.HasPrefix(out, "intact: 3 batches, 3 rows") {
			t.Fatalf("untouched: exit %d, %q", code, out)
		}
		if code, out = runVerify(t, "-head", fmt.Sprintf("%d:%064x", last, 0)); code != exitTampered {
			t.Fatalf("with a wrong head: exit %d, %q", code, out)
		}
		if _, err := db.Admin.Exec(ctx, "SET ROLE apigee_owner; UPDATE apigee.api_calls SET request_path = '/x' WHERE message_id = 'm1'; RESET ROLE"); err != nil {
			t.Fatal(err)
		}
		code, out = runVerify(t)
		if want := fmt.Sprintf("TAMPERED: batch %d: changed row", last-1); code != exitTampered || !strings.HasPrefix(out, want) {
			t.Fatalf("after an owner UPDATE: exit %d, %q; want %q", code, out, want)
		}
	})
}

func runVerify(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errs bytes.Buffer
	code := run(context.Background(), args, &out, &errs)
	if errs.Len() > 0 {
		t.Logf("stderr: %s", errs.String())
	}
	return code, out.String()
}
