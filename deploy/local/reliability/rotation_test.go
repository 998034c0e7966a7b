//go:build reliability

package reliability

import (
	"context"
	"net/url"
	"testing"
	"time"

	"apigee-timescale/deploy/local/stack"
	"apigee-timescale/functions/rotate"
)

// TestRotationDuringLoad rotates the ingest credentials every two seconds
// while records stream in. Ingest reads them from Secret Manager
// (DB_SECRET) and its connections live one second, so it keeps opening
// connections as either login and must follow the rotations: not one
// delivery may fail.
func TestRotationDuringLoad(t *testing.T) { each(t, testRotationDuringLoad) }

func testRotationDuringLoad(t *testing.T, tg *target) {
	h := newHarness(t, tg)
	ctx := context.Background()
	sm, err := stack.StartSecretManager()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sm.Stop)
	secret, err := sm.CreateSecret(ctx, "reliability", "ingest-db")
	if err != nil {
		t.Fatal(err)
	}
	rotRole := "rel_rotate_" + stack.RandomSuffix(4)
	rotDSN, err := h.db.Login(ctx, rotRole, stack.RandomSuffix(16), "apigee_rotate")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.db.DropRole(context.Background(), rotRole) })
	u, err := url.Parse(h.db.URL)
	if err != nil {
		t.Fatal(err)
	}

	rotLogs, ingLogs := &stack.SyncBuffer{}, &stack.SyncBuffer{}
	dumpOnFailure(t, "rotate", rotLogs)
	dumpOnFailure(t, "ingest", ingLogs)
	rotPort, err := stack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	rot, err := stack.StartProcess(ctx, "rotate", binary(t, "rotate"), rotPort, []string{
		"DATABASE_URL=" + rotDSN,
		"SECRET_MANAGER_ENDPOINT=" + sm.Addr,
		"ROTATE_SECRET=" + secret,
		"ROTATE_MIN_INTERVAL=0s",
		"ROTATE_TTL=1h",
		"ROTATE_DB_HOST=" + u.Hostname(),
		"ROTATE_DB_PORT=" + u.Port(),
		"ROTATE_DB_NAME=" + h.db.Name,
		"ROTATE_DB_SSLMODE=disable",
	}, rotLogs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rot.Stop(10 * time.Second) })
	var rotated []rotate.Summary
	var rotatedAt []time.Time
	doRotate := func() {
		t.Helper()
		rotatedAt = append(rotatedAt, time.Now())
		var sum rotate.Summary
		if err := stack.Trigger(ctx, nil, rot.URL, "rotate-ingest-db", nil, &sum); err != nil {
			t.Fatal(err)
		}
		if sum.Status != rotate.StatusRotated {
			t.Fatalf("rotation %d: %+v", len(rotated)+1, sum)
		}
		rotated = append(rotated, sum)
	}
	doRotate() // the secret starts empty: the first run fills it

	port, err := stack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ing := h.ingestProcess(t, port, ingLogs,
		"DB_SECRET="+secret,
		"SECRET_MANAGER_ENDPOINT="+sm.Addr,
		"DB_MAX_CONN_LIFETIME=1s",
	)
	relay, rec := h.relay(t, h.sub, ing.URL, nil)

	const n = 9000
	msgs := h.calls(t, n)
	wait := h.publishAsync(t, h.topic, msgs, 1000)
	done := make(chan struct{})
	go func() { wait(); close(done) }()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for loading := true; loading; {
		select {
		case <-done:
			loading = false
		case <-tick.C:
			doRotate()
		}
	}
	waitAcked(t, relay, n, 60*time.Second)
	doRotate()

	h.assertStoredOnce(t, msgs)
	st := relay.Stats()
	if failed := rec.Failed(); failed != 0 || st.Nacked != 0 {
		t.Fatalf("%d failed deliveries (statuses %v, transport errors %v) during %d rotations",
			failed, rec.Statuses(), transportErrors(rec), len(rotated))
	}
	if len(rotated) < 5 {
		t.Fatalf("only %d rotations during the load", len(rotated))
	}
	for i := 1; i < len(rotated); i++ {
		if rotated[i].RotatedLogin == rotated[i-1].RotatedLogin {
			t.Fatalf("rotations %d and %d both re-passworded %s", i, i+1, rotated[i].RotatedLogin)
		}
	}
	// Ingest followed the rotations: a connection lives one second, so a
	// batch committed well after its login was re-passworded was written
	// on a connection opened with the new password, read from the secret.
	// (It usually keeps to one login: its cached credentials go stale
	// exactly when that login is re-passworded, and the newest version then
	// names it. Batches written as both logins prove the same.)
	var role string
	var roles int
	if err := h.db.Admin.QueryRow(ctx, "SELECT min(ingest_role), count(DISTINCT ingest_role) FROM apigee.ingest_batches").Scan(&role, &roles); err != nil {
		t.Fatal(err)
	}
	var later int64
	if roles < 2 {
		var after time.Time
		for i, sum := range rotated[1 : len(rotated)-1] { // during the load
			if sum.RotatedLogin == role {
				after = rotatedAt[i+1].Add(1500 * time.Millisecond)
				break
			}
		}
		if after.IsZero() {
			t.Fatalf("login %s in use was never re-passworded during the load: %+v", role, rotated)
		}
		later = h.count(t, "SELECT count(*) FROM apigee.ingest_batches WHERE ingest_role = $1 AND committed_at > $2", role, after)
		if later == 0 {
			t.Fatalf("no batch committed as %s after %v, when its password had changed", role, after)
		}
	}
	t.Logf("%d rotations (last %s) during %d deliveries: 0 failed; %d batches as %s committed over 1.5s after its re-password (%d roles used)",
		len(rotated), rotated[len(rotated)-1].NewVersion, st.Delivered, later, role, roles)
}
