package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/audit"
	"apigee-timescale/shared/record"
)

// ingestPool connects as a login in apigee_ingest, as the function does.
func ingestPool(t *testing.T, db *testkit.DB) *pgxpool.Pool {
	t.Helper()
	return db.LoginPool(t, "apigee_ingest")
}

func testCall(id, tenant string, at time.Time) Call {
	ms := int32(42)
	return Call{
		Record: &record.Record{
			MessageID: id, ReceivedAt: at.UTC().Truncate(time.Millisecond),
			Organization: "org", Environment: "prod", APIProxy: "orders-v1", Tenant: tenant,
			RequestVerb: "GET", RequestPath: "/orders", ResponseStatusCode: 200, TotalResponseTime: &ms,
			Attributes: map[string]string{"k": "v"},
		},
		PubSubMessageID: "ps-" + id,
	}
}

// eachPath runs f on both databases with a Writer that sends every batch
// as column arrays, and with one that sends every batch through the
// staging table.
func eachPath(t *testing.T, f func(t *testing.T, db *testkit.DB, w *Writer)) {
	for _, p := range []struct {
		name string
		max  int
	}{{"arrays", unnestMaxRows}, {"staged", 0}} {
		t.Run(p.name, func(t *testing.T) {
			testkit.Each(t, func(t *testing.T, db *testkit.DB) {
				w := NewWriter(ingestPool(t, db))
				w.unnestMax = p.max
				f(t, db, w)
			})
		})
	}
}

func TestWriteExactlyOnce(t *testing.T) {
	eachPath(t, func(t *testing.T, db *testkit.DB, w *Writer) {
		ctx := context.Background()
		now := time.Now().UTC()
		b := &Batch{Messages: 3, Calls: []Call{
			testCall("m1", "tenant-a", now),
			testCall("m2", "tenant-a", now.Add(-time.Minute)),
			testCall("m2", "tenant-a", now.Add(-time.Minute)),     // the same call twice in one batch
			testCall("m3", "tenant-b", now.Add(-40*24*time.Hour)), // late data: a day with no partition yet
		}, Rejects: []Reject{{
			ReceivedAt: now, DedupeKey: "msg:x:0", Tenant: "tenant-a", Reason: "not_json",
			Detail: "not JSON", Payload: []byte("{oops"), PubSubMessageID: "x",
		}}}
		res, err := w.Write(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		if res.Inserted != 3 || res.Duplicates != 1 || res.Rejected != 1 {
			t.Fatalf("first write: %+v, want 3 inserted, 1 duplicate, 1 rejected", res)
		}
		if n := count(t, db, "SELECT count(*) FROM apigee.api_calls"); n != 3 {
			t.Fatalf("%d rows, want 3", n)
		}
		// Minutes touched, for the rollup: one per distinct minute inserted.
		if n := count(t, db, "SELECT count(DISTINCT bucket_start) FROM apigee.rollup_invalidations WHERE batch_id = $1", res.BatchID); n != 3 {
			t.Fatalf("%d invalidated minutes, want 3", n)
		}
		var sum []byte
		var inserted, dups int
		if err := db.Admin.QueryRow(ctx, "SELECT rows_sha256, rows_inserted, rows_duplicate FROM apigee.ingest_batches WHERE batch_id = $1", res.BatchID).Scan(&sum, &inserted, &dups); err != nil {
			t.Fatal(err)
		}
		if string(sum) != string(res.SHA256[:]) || inserted != 3 || dups != 1 {
			t.Fatalf("batch row: %x %d %d, want %x 3 1", sum, inserted, dups, res.SHA256)
		}

		// Redelivery of everything: nothing new.
		again, err := w.Write(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		if again.Inserted != 0 || again.Duplicates != 4 || again.Rejected != 0 {
			t.Fatalf("redelivery: %+v, want 0 inserted, 4 duplicates, 0 rejected", again)
		}
		if n := count(t, db, "SELECT count(*) FROM apigee.api_calls"); n != 3 {
			t.Fatalf("%d rows after redelivery, want 3", n)
		}
		if n := count(t, db, "SELECT count(*) FROM apigee.ingest_rejects"); n != 1 {
			t.Fatalf("%d rejects after redelivery, want 1", n)
		}
		var attrs string
		if err := db.Admin.QueryRow(ctx, "SELECT attributes::text FROM apigee.api_calls WHERE message_id = 'm1'").Scan(&attrs); err != nil || attrs != `{"k": "v"}` {
			t.Fatalf("attributes %q (err %v)", attrs, err)
		}
	})
}

// A publisher retry is a second Pub/Sub message with the same record: when
// both land in one batch, the row stored is the first delivered, and
// rows_sha256 is the hash of that row, so the verifier can recompute it.
func TestRetryInOneBatchStoresTheFirstCopy(t *testing.T) {
	eachPath(t, func(t *testing.T, db *testkit.DB, w *Writer) {
		ctx := context.Background()
		now := time.Now().UTC().Truncate(time.Millisecond)
		first, retry := testCall("m1", "t", now), testCall("m1", "t", now)
		first.PubSubMessageID, retry.PubSubMessageID = "ps-1", "ps-2"
		first.PublishTime, retry.PublishTime = now, now.Add(time.Second)
		for _, order := range [][]Call{{first, retry}, {retry, first}} {
			if _, err := db.Admin.Exec(ctx, "SET session_replication_role = replica; DELETE FROM apigee.api_calls; SET session_replication_role = DEFAULT"); err != nil {
				t.Fatal(err)
			}
			res, err := w.Write(ctx, &Batch{Messages: 2, Calls: order})
			if err != nil {
				t.Fatal(err)
			}
			var stored string
			if err := db.Admin.QueryRow(ctx, "SELECT pubsub_message_id FROM apigee.api_calls WHERE batch_id = $1", res.BatchID).Scan(&stored); err != nil {
				t.Fatal(err)
			}
			if stored != order[0].PubSubMessageID || res.Inserted != 1 || res.Duplicates != 1 {
				t.Fatalf("stored %s (%+v), want %s: the first delivered, once", stored, res, order[0].PubSubMessageID)
			}
			if want, n, err := audit.HashStored(ctx, db.Admin, res.BatchID); err != nil || n != 1 || res.SHA256 != want {
				t.Fatalf("rows_sha256 %x is not the hash of the stored row (%x, %d rows, %v)", res.SHA256, want, n, err)
			}
		}
	})
}

// TestBatchRowFormat: a batch of new calls sent as arrays without rejects
// goes in one round trip and its batch row is in format 2; every other
// batch, and one that meets a call stored already (which rolls back and
// goes again in two round trips), in format 1. Whatever the format, the
// batch row's counts are right and the verifier recomputes its hash.
func TestBatchRowFormat(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		w := NewWriter(ingestPool(t, db))
		now := time.Now().UTC().Truncate(time.Millisecond)
		if _, err := w.Write(ctx, &Batch{Messages: 1, Calls: []Call{testCall("stored", "t", now)}}); err != nil {
			t.Fatal(err)
		}
		reject := Reject{ReceivedAt: now, DedupeKey: "msg:r:0", Tenant: "t", Reason: "not_json", Detail: "not JSON", Payload: []byte("{")}
		for _, c := range []struct {
			name    string
			calls   []Call
			rejects []Reject
			staged  bool
			// format, inserted and dups are the batch row's.
			format         int16
			inserted, dups int
		}{
			{name: "new calls", calls: []Call{testCall("a1", "t", now), testCall("a2", "u", now.Add(-2*time.Minute))}, format: audit.RowsFormat2, inserted: 2},
			{name: "a call twice in the batch", calls: []Call{testCall("b1", "t", now), testCall("b1", "t", now)}, format: audit.RowsFormat2, inserted: 1, dups: 1},
			{name: "a call stored already", calls: []Call{testCall("c1", "t", now), testCall("stored", "t", now)}, format: audit.RowsFormat1, inserted: 1, dups: 1},
			{name: "only calls stored already", calls: []Call{testCall("stored", "t", now)}, format: audit.RowsFormat1, dups: 1},
			{name: "with a reject", calls: []Call{testCall("d1", "t", now)}, rejects: []Reject{reject}, format: audit.RowsFormat1, inserted: 1},
			{name: "staged", calls: []Call{testCall("e1", "t", now), testCall("e2", "t", now)}, staged: true, format: audit.RowsFormat1, inserted: 2},
		} {
			t.Run(c.name, func(t *testing.T) {
				w.unnestMax = unnestMaxRows
				if c.staged {
					w.unnestMax = 0
				}
				res, err := w.Write(ctx, &Batch{Messages: len(c.calls), Calls: c.calls, Rejects: c.rejects})
				if err != nil {
					t.Fatal(err)
				}
				var format int16
				var inserted, dups int
				var sum []byte
				if err := db.Admin.QueryRow(ctx, `SELECT rows_sha256_format, rows_inserted, rows_duplicate, rows_sha256
					FROM apigee.ingest_batches WHERE batch_id = $1`, res.BatchID).Scan(&format, &inserted, &dups, &sum); err != nil {
					t.Fatal(err)
				}
				if format != c.format || inserted != c.inserted || dups != c.dups || res.Inserted != c.inserted || res.Duplicates != c.dups {
					t.Fatalf("batch row: format %d, %d inserted, %d duplicate (result %+v); want format %d, %d, %d",
						format, inserted, dups, res, c.format, c.inserted, c.dups)
				}
				want, n, err := audit.HashStored(ctx, db.Admin, res.BatchID)
				if err != nil || n != int64(c.inserted) || string(sum) != string(want[:]) || res.SHA256 != want {
					t.Fatalf("rows_sha256 %x (result %x), recomputed %x over %d rows (%v)", sum, res.SHA256, want, n, err)
				}
				if n := count(t, db, "SELECT count(*) FROM apigee.rollup_invalidations WHERE batch_id = $1", res.BatchID); (n > 0) != (c.inserted > 0) {
					t.Fatalf("%d invalidated minutes for %d rows inserted", n, c.inserted)
				}
			})
		}
		rep, err := audit.Verify(ctx, db.Admin, audit.Options{Orphans: true})
		if err != nil || rep.Problem != nil || !rep.Done {
			t.Fatalf("verify: %+v (%v)", rep, err)
		}
	})
}

func TestHashIsRecomputable(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)
	a := []Call{testCall("a", "t", now), testCall("b", "t", now)}
	h1 := HashCalls(7, a)
	if h1 != HashCalls(7, a) {
		t.Fatal("hash is not deterministic")
	}
	if h1 == HashCalls(8, a) {
		t.Fatal("hash ignores the batch id")
	}
	b := []Call{testCall("a", "t", now), testCall("b", "u", now)}
	if h1 == HashCalls(7, b) {
		t.Fatal("hash ignores a changed tenant")
	}
}

func TestConcurrentWritersSameMessages(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		for _, n := range []int{64, 500} { // one statement each, and staged
			t.Run(fmt.Sprint(n), func(t *testing.T) { concurrentWritersSameMessages(t, db, n) })
		}
	})
}

// concurrentWritersSameMessages has four writers store the same n calls at
// once; the one-statement batches (no ON CONFLICT) meet the first one's
// keys as unique violations and go the two-round-trip way.
func concurrentWritersSameMessages(t *testing.T, db *testkit.DB, n int) {
	w := NewWriter(ingestPool(t, db))
	now := time.Now().UTC()
	prefix := fmt.Sprintf("same%d-", n)
	var calls []Call
	for i := range n {
		calls = append(calls, testCall(fmt.Sprint(prefix, i), "tenant-a", now.Add(-time.Duration(i)*time.Second)))
	}
	var wg sync.WaitGroup
	results := make([]Result, 4)
	errs := make([]error, 4)
	for g := range 4 {
		// Each writer holds the same calls in another order, as batches of
		// redelivered messages do: they must neither deadlock nor double-insert.
		mine := slices.Clone(calls)
		rand.New(rand.NewPCG(uint64(g), 1)).Shuffle(len(mine), func(i, j int) { mine[i], mine[j] = mine[j], mine[i] })
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[g], errs[g] = w.Write(context.Background(), &Batch{Calls: mine, Messages: len(mine)})
		}()
	}
	wg.Wait()
	total := 0
	for g := range 4 {
		if errs[g] != nil {
			t.Fatal(errs[g])
		}
		total += results[g].Inserted
	}
	if total != n {
		t.Fatalf("writers inserted %d rows in all, want %d", total, n)
	}
	if got := count(t, db, "SELECT count(*) FROM apigee.api_calls WHERE message_id LIKE $1", prefix+"%"); got != n {
		t.Fatalf("%d rows, want %d", got, n)
	}
	// The batch rows (what verify and the seals account for) agree.
	ids := make([]int64, len(results))
	for g, r := range results {
		ids[g] = r.BatchID
	}
	if got := count(t, db, "SELECT coalesce(sum(rows_inserted), 0) FROM apigee.ingest_batches WHERE batch_id = ANY($1)", ids); got != n {
		t.Fatalf("the batch rows count %d calls inserted, want %d", got, n)
	}
}

func TestDataErrorIsClassified(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		w := NewWriter(ingestPool(t, db))
		bad := testCall(strings.Repeat("x", 200), "tenant-a", time.Now()) // over the 128-byte CHECK
		_, err := w.Write(context.Background(), &Batch{Calls: []Call{bad}})
		if err == nil || !IsDataError(err) {
			t.Fatalf("got %v, want a data error", err)
		}
		if IsDataError(errors.New("connection refused")) || IsDataError(pgx.ErrNoRows) {
			t.Fatal("non-database errors classified as data errors")
		}
		if n := count(t, db, "SELECT count(*) FROM apigee.ingest_batches"); n != 0 {
			t.Fatalf("failed batch left %d batch rows", n)
		}
	})
}

// The quarantine takes whatever it is given: text PostgreSQL refuses (NUL,
// invalid UTF-8) in any reject field is cleaned on the way in (the envelope
// decoder, the quarantine constructor), not a batch failure that would
// repeat on every redelivery.
func TestRejectWithUnstorableTextIsStored(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		w := NewWriter(ingestPool(t, db))
		bad := `a\u0000b` + "\xff" + `c` // as JSON text
		body := `{"message":{"data":"e30=","messageId":"m` + bad + `","publishTime":"p` + bad +
			`","attributes":{"k` + bad + `":"v` + bad + `","tenant":"t` + bad + `"}},"subscription":"s` + bad + `"}`
		m := decodePush(http.Header{}, []byte(body))
		if m.bad == nil {
			t.Fatal("a publish time that is not RFC 3339 was accepted")
		}
		src := sourceOf(&m, time.Now())
		c := testCall("c1", "tenant-a", time.Now())
		c.index = 3
		rejects := []Reject{src.reject(*m.bad, ""), src.dbRejected(&c, errors.New("refused: d\x00\xff"))}
		res, err := w.Write(context.Background(), &Batch{Rejects: rejects, Messages: 1})
		if err != nil {
			t.Fatalf("write: %v", err)
		}
		if res.Rejected != 2 {
			t.Fatalf("%d rejects stored, want 2", res.Rejected)
		}
		const want = "ab\uFFFDc"
		if n := count(t, db, `SELECT count(*) FROM apigee.ingest_rejects WHERE dedupe_key = 'msg:m'||$1||':-1' AND tenant = 't'||$1
			AND detail LIKE '%: p'||$1 AND pubsub_message_id = 'm'||$1 AND subscription = 's'||$1
			AND attributes = jsonb_build_object('k'||$1, 'v'||$1, 'tenant', 't'||$1) AND payload = $2`, want, []byte(body)); n != 1 {
			t.Fatalf("cleaned reject not found as expected (%d rows)", n)
		}
		if n := count(t, db, `SELECT count(*) FROM apigee.ingest_rejects WHERE dedupe_key = 'msg:m'||$1||':3' AND tenant = 'tenant-a'
			AND reason = 'db_rejected' AND detail = 'refused: d'||$2 AND record_index = 3`, want, "\uFFFD"); n != 1 {
			t.Fatalf("cleaned database reject not found as expected (%d rows)", n)
		}
	})
}

// A partition dropped after the Writer cached its day (retention) is
// recognised from the error's fields, recreated, and the batch written.
func TestDroppedPartitionIsRecreated(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		if count(t, db, "SELECT count(*) FROM apigee.settings WHERE key = 'storage' AND value = 'partitioned'") == 0 {
			t.Skip("TimescaleDB creates chunks itself")
		}
		ctx := context.Background()
		w := NewWriter(ingestPool(t, db))
		at := time.Now().UTC().Add(-3 * 24 * time.Hour)
		if _, err := w.Write(ctx, &Batch{Calls: []Call{testCall("p1", "tenant-a", at)}, Messages: 1}); err != nil {
			t.Fatal(err)
		}
		part := "apigee_chunks.api_calls_" + at.Format("20060102")
		if _, err := db.Admin.Exec(ctx, "DROP TABLE "+part); err != nil {
			t.Fatal(err)
		}
		res, err := w.Write(ctx, &Batch{Calls: []Call{testCall("p2", "tenant-a", at)}, Messages: 1})
		if err != nil || res.Inserted != 1 {
			t.Fatalf("after dropping %s: %+v, %v; want the partition recreated and 1 row inserted", part, res, err)
		}
	})
}

func TestErrorClassification(t *testing.T) {
	tests := []struct {
		name              string
		err               error
		data, noPartition bool
	}{
		{"no partition for the row", &pgconn.PgError{Code: pgerrcode.CheckViolation, TableName: "api_calls"}, false, true},
		{"CHECK constraint", &pgconn.PgError{Code: pgerrcode.CheckViolation, TableName: "api_calls", ConstraintName: "api_calls_message_id_check"}, true, false},
		{"bad text", &pgconn.PgError{Code: pgerrcode.CharacterNotInRepertoire}, true, false},
		{"not null", fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: pgerrcode.NotNullViolation, TableName: "api_calls"}), true, false},
		{"deadlock", &pgconn.PgError{Code: pgerrcode.DeadlockDetected}, false, false},
		{"connection refused", errors.New("connection refused"), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsDataError(tt.err); got != tt.data {
				t.Errorf("IsDataError = %v, want %v", got, tt.data)
			}
			if got := isNoPartition(tt.err); got != tt.noPartition {
				t.Errorf("isNoPartition = %v, want %v", got, tt.noPartition)
			}
		})
	}
}

// fullCall sets every column, with the text that needs escaping where a
// column is text, text[] or jsonb.
func fullCall(id string, at time.Time) Call {
	rev, code, ms, tms := int32(7), int16(502), int32(42), int32(40)
	req, resp, isErr := int64(12), int64(1<<40), true
	return Call{
		Record: &record.Record{
			MessageID: id, ReceivedAt: at.UTC().Truncate(time.Millisecond),
			Organization: "org", Environment: "prod", APIProxy: "orders-v1", APIProxyRevision: &rev, ProxyBasepath: "/v1",
			RequestVerb: "POST", RequestPath: `/a "b" \c é`, ResponseStatusCode: 200, TargetResponseCode: &code,
			TotalResponseTime: &ms, TargetResponseTime: &tms, RequestSize: &req, ResponseSize: &resp,
			ClientIP: netip.MustParseAddr("2001:db8::7"), ForwardedClientIP: netip.MustParseAddr("198.51.100.9"),
			UserAgent: "ua,{x}", TargetHost: "backend", FaultName: "f", IsError: &isErr,
			DeveloperApp: "app", DeveloperEmail: "d@example.com", APIProduct: "gold", ClientID: "cid", Tenant: "t",
			Identity: record.Identity{Subject: "s", Issuer: "i", Email: "e@example.com", Auth: "jwt",
				Scopes: []string{"read", `we"ird`, `back\slash`, "with,comma", "{brace}", "NULL", ""}},
			Attributes: map[string]string{"k": `v"1`},
			Extra:      map[string]json.RawMessage{"z": json.RawMessage(`{"b":1,"a":[true,null]}`)},
		},
		PubSubMessageID: "ps-" + id, PublishTime: at.Add(time.Second),
	}
}

// TestPathsStoreTheSameRow: a batch sent as column arrays stores exactly
// what the staging table's COPY stores, column by column, so rows_sha256
// recomputed from either is the same.
func TestPathsStoreTheSameRow(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		ctx := context.Background()
		at := time.Now().UTC()
		arrays, staged := NewWriter(ingestPool(t, db)), NewWriter(ingestPool(t, db))
		staged.unnestMax = 0
		for name, w := range map[string]*Writer{"arrays": arrays, "staged": staged} {
			if _, err := w.Write(ctx, &Batch{Messages: 1, Calls: []Call{fullCall(name, at)}}); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		var cols []string
		for _, c := range stageColumns {
			if c != "message_id" && c != "pubsub_message_id" && c != "batch_id" {
				cols = append(cols, c)
			}
		}
		row := func(id string) string {
			var s string
			q := "SELECT row(" + strings.Join(cols, ", ") + ")::text FROM apigee.api_calls WHERE message_id = $1"
			if err := db.Admin.QueryRow(ctx, q, id).Scan(&s); err != nil {
				t.Fatal(err)
			}
			return s
		}
		if a, s := row("arrays"), row("staged"); a != s {
			t.Fatalf("stored rows differ:\narrays %s\nstaged %s", a, s)
		}
		var scopes []string
		if err := db.Admin.QueryRow(ctx, "SELECT identity_scopes FROM apigee.api_calls WHERE message_id = 'arrays'").Scan(&scopes); err != nil {
			t.Fatal(err)
		}
		if want := fullCall("", at).Identity.Scopes; !slices.Equal(scopes, want) {
			t.Errorf("scopes stored as %q, want %q", scopes, want)
		}
	})
}

// TestKeyOrder: calls go in key order (received_at, then message_id), one
// copy per key, the first delivered, whatever order they came in.
func TestKeyOrder(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := func(id string, sec int, ps string) Call {
		x := testCall(id, "t", at.Add(time.Duration(sec)*time.Second))
		x.PubSubMessageID = ps
		return x
	}
	in := []Call{c("b", 1, "p1"), c("a", 1, "p2"), c("z", 0, "p3"), c("b", 1, "p4"), c("a", 2, "p5")}
	got := keyOrder(slices.Clone(in))
	var ids []string
	for _, g := range got {
		ids = append(ids, g.MessageID+"/"+g.PubSubMessageID)
	}
	if want := []string{"z/p3", "a/p2", "b/p1", "a/p5"}; !slices.Equal(ids, want) {
		t.Errorf("got %v, want %v", ids, want)
	}
}

// TestColumnArraysNull: a column NULL in every row is sent as one NULL,
// any other as an array with a NULL where a row has none.
func TestColumnArraysNull(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a, b := testCall("a", "t", at), testCall("b", "t", at)
	b.UserAgent = "curl/8"
	cols := columnArrays(rowValues(0, []Call{a, b}))
	for j, name := range slices.Delete(slices.Clone(stageColumns), batchIDColumn, batchIDColumn+1) {
		switch name {
		case "useragent":
			ua, ok := cols[j].([]*string)
			if !ok || len(ua) != 2 || ua[0] != nil || ua[1] == nil || *ua[1] != "curl/8" {
				t.Errorf("useragent: got %#v", cols[j])
			}
		case "target_host", "identity_scopes", "extra":
			if cols[j] != nil {
				t.Errorf("%s: got %#v, want nil (NULL)", name, cols[j])
			}
		}
	}
}
