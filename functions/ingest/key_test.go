package ingest

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"apigee-timescale/deploy/local/testkit"
)

// collideByLength replaces apigee.call_key, the dedupe key's hash of
// message_id, by one under which every two ids of the same length
// collide: what a 64-bit collision would do, made certain. Only the
// connections opened afterwards see it (the index expression is cached
// per connection), so call it before the ingest pool's first query.
func collideByLength(t *testing.T, db *testkit.DB) {
	t.Helper()
	if _, err := db.Admin.Exec(context.Background(), `
		CREATE OR REPLACE FUNCTION apigee.call_key(message_id text) RETURNS bigint
		LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT length(message_id)::bigint'`); err != nil {
		t.Fatal(err)
	}
}

// TestKeyCollisionIsNotADuplicate: the dedupe key hashes message_id, so
// ON CONFLICT alone would take a colliding call for a redelivery and drop
// it. The Writer must tell the two apart: a redelivery is skipped, a
// collision fails the batch as a data error naming the call.
func TestKeyCollisionIsNotADuplicate(t *testing.T) {
	eachPath(t, func(t *testing.T, db *testkit.DB, w *Writer) {
		ctx := context.Background()
		collideByLength(t, db)
		at := time.Now().UTC().Truncate(time.Millisecond)
		if _, err := w.Write(ctx, &Batch{Messages: 1, Calls: []Call{testCall("m1", "t", at)}}); err != nil {
			t.Fatal(err)
		}
		// A redelivery of m1, and m3 at another instant: no collision.
		res, err := w.Write(ctx, &Batch{Messages: 2, Calls: []Call{testCall("m1", "t", at), testCall("m3", "t", at.Add(time.Second))}})
		if err != nil || res.Inserted != 1 || res.Duplicates != 1 {
			t.Fatalf("redelivery: %+v, %v; want 1 inserted, 1 duplicate", res, err)
		}
		for name, calls := range map[string][]Call{
			"with a stored call":      {testCall("m2", "t", at)},
			"within the batch":        {testCall("m4", "t", at.Add(time.Minute)), testCall("m5", "t", at.Add(time.Minute))},
			"beside a real duplicate": {testCall("m1", "t", at), testCall("m6", "t", at)},
		} {
			t.Run(name, func(t *testing.T) {
				_, err := w.Write(ctx, &Batch{Messages: len(calls), Calls: calls})
				var kc *KeyCollisionError
				if !errors.As(err, &kc) || !IsDataError(err) {
					t.Fatalf("got %v, want a KeyCollisionError that is a data error", err)
				}
				if n := count(t, db, "SELECT count(*) FROM apigee.api_calls"); n != 2 {
					t.Fatalf("%d rows stored, want the 2 before (the failed batch stores nothing)", n)
				}
			})
		}
	})
}

// TestKeyCollisionIsQuarantined: end to end, a delivery whose call
// collides is acknowledged with its record in the quarantine, not lost.
func TestKeyCollisionIsQuarantined(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		collideByLength(t, db)
		s := newService(t, db, nil)
		at := time.Now().UTC().Truncate(time.Millisecond)
		for _, m := range []struct{ ps, id string }{{"ps-1", "k1"}, {"ps-2", "k2"}} {
			if code := post(t, s, wrapped(m.ps, rec(m.id, at), nil), nil); code != http.StatusNoContent {
				t.Fatalf("%s: status %d, want 204", m.id, code)
			}
		}
		if n := count(t, db, "SELECT count(*) FROM apigee.api_calls WHERE message_id = 'k1'"); n != 1 {
			t.Fatalf("k1 stored %d times, want once", n)
		}
		if n := count(t, db, `SELECT count(*) FROM apigee.ingest_rejects
			WHERE reason = 'db_rejected' AND pubsub_message_id = 'ps-2' AND convert_from(payload, 'UTF8')::jsonb->>'MessageID' = 'k2'`); n != 1 {
			t.Fatalf("k2 quarantined %d times, want once", n)
		}
	})
}
