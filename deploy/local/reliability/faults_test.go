//go:build reliability

package reliability

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"apigee-timescale/deploy/local/stack"
	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/dbconn"
)

// TestSIGKILLDuringLoad kills the ingest process outright while records
// stream in, as Cloud Run may when an instance must go before its drain
// ends: every message it acknowledged is stored, and every other one is
// redelivered to the next instance and stored once.
func TestSIGKILLDuringLoad(t *testing.T) { each(t, testSIGKILLDuringLoad) }

func testSIGKILLDuringLoad(t *testing.T, tg *target) {
	h := newHarness(t, tg)
	first, port, logs := h.startIngest(t)
	relay, rec := h.relay(t, h.sub, first.URL, nil)

	const n = 8000
	msgs := h.calls(t, n)
	wait := h.publishAsync(t, h.topic, msgs, 1500)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := h.db.WaitCount(ctx, n/4, "SELECT count(*) FROM apigee.api_calls"); err != nil {
		t.Fatal(err)
	}
	if err := first.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("ingest still running 10s after SIGKILL")
	}
	if first.ExitErr() == nil {
		t.Fatal("ingest exited 0 after SIGKILL: it was not killed")
	}
	storedAtKill := h.count(t, "SELECT count(*) FROM apigee.api_calls")
	acked := rec.Acked() // nothing more can be acknowledged by the dead process

	pubs := wait()
	recordOf := map[string]string{}
	for _, p := range pubs {
		recordOf[p.id] = p.msg.Call.MessageID
	}
	ackedRecords := make([]string, 0, len(acked))
	for id := range acked {
		ackedRecords = append(ackedRecords, recordOf[id])
	}
	missing := h.count(t, `SELECT count(*) FROM unnest($1::text[]) AS w(id)
		WHERE NOT EXISTS (SELECT 1 FROM apigee.api_calls c WHERE c.message_id = w.id)`, ackedRecords)
	if missing != 0 || len(ackedRecords) == 0 || len(ackedRecords) >= n {
		t.Fatalf("%d of %d messages acknowledged before the kill are not stored (of %d)", missing, len(ackedRecords), n)
	}

	second := h.ingestProcess(t, port, logs)
	waitAcked(t, relay, n, 60*time.Second)
	h.assertStoredOnce(t, msgs)
	redelivered, cutOff := 0, 0
	for _, as := range rec.All() {
		if len(as) > 1 {
			redelivered++
		}
		for _, a := range as {
			if a.Status == 0 {
				cutOff++
			}
		}
	}
	if redelivered == 0 || cutOff == 0 {
		t.Fatalf("%d messages redelivered, %d attempts cut off: the kill interrupted nothing", redelivered, cutOff)
	}
	_, duplicates := h.batchTotals(t)
	t.Logf("SIGKILL after %d of %d acknowledged (%d rows stored at the kill); %d attempts cut off, %d messages redelivered to pid %d, %d duplicates absorbed; %d rows, each once; statuses %v",
		len(ackedRecords), n, storedAtKill, cutOff, redelivered, second.PID(), duplicates, n, rec.Statuses())
}

// batchTotals sums apigee.ingest_batches.
func (h *harness) batchTotals(t *testing.T) (inserted, duplicates int64) {
	t.Helper()
	if err := h.db.Admin.QueryRow(context.Background(),
		"SELECT coalesce(sum(rows_inserted), 0), coalesce(sum(rows_duplicate), 0) FROM apigee.ingest_batches").Scan(&inserted, &duplicates); err != nil {
		t.Fatal(err)
	}
	return inserted, duplicates
}

// TestConnectionLimit lets other clients take every connection slot the
// server gives ordinary roles (max_connections less the superusers'
// reserve), as when many instances scale out at once, while records stream
// in and ingest's connections retire four times a second: ingest answers
// non-ack (429/503) within the deadline, does not crash, and stores
// everything once the slots free up. Each retired connection is a race for
// its slot between ingest and the crowd; at one a second, ingest once won
// every race of the six seconds (a CI run of session 10, on PostgreSQL),
// and so never had to answer non-ack.
func TestConnectionLimit(t *testing.T) { each(t, testConnectionLimit) }

func testConnectionLimit(t *testing.T, tg *target) {
	h := newHarness(t, tg)
	ctx := context.Background()
	ing, _, _ := h.startIngest(t, "DB_MAX_CONNS=4", "DB_MAX_CONN_LIFETIME=250ms")
	relay, rec := h.relay(t, h.sub, ing.URL, nil)
	warm := h.calls(t, 300)
	if _, err := h.publish(ctx, h.topic, warm, 0); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, relay, int64(len(warm)), 30*time.Second)

	role := "rel_crowd_" + stack.RandomSuffix(4)
	crowdDSN, err := h.db.Login(ctx, role, stack.RandomSuffix(16), "apigee_reader")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.db.DropRole(context.Background(), role) })
	crowd := newCrowd(crowdDSN)
	defer crowd.release()
	held, err := crowd.fill(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var maxConns int
	if err := h.db.Admin.QueryRow(ctx, "SELECT current_setting('max_connections')::int").Scan(&maxConns); err != nil {
		t.Fatal(err)
	}

	const n = 3000
	msgs := h.calls(t, n)
	full := time.Now()
	wait := h.publishAsync(t, h.topic, msgs, 600)
	stop := make(chan struct{})
	go crowd.keepFull(ctx, stop) // take every slot ingest gives back
	time.Sleep(6 * time.Second)
	duringFull := answered(rec)
	statusesFull := rec.Statuses()
	storedFull := h.count(t, "SELECT count(*) FROM apigee.ingest_batches WHERE committed_at > $1", full.Add(2*time.Second))
	close(stop)
	peak := crowd.release()
	freed := time.Now()

	wait()
	waitAcked(t, relay, int64(len(warm)+n), 60*time.Second)
	caughtUp := time.Since(freed)
	h.assertStoredOnce(t, append(warm, msgs...))
	alive(t, ing)
	a := answered(rec)
	if duringFull.nonAck == 0 {
		t.Fatalf("no non-ack answer while the server was full (statuses %v): ingest never needed a connection", statusesFull)
	}
	for status := range rec.Statuses() {
		if status != 204 && status != 429 && status != 503 {
			t.Errorf("status %d answered; want only 204, or 429/503 (non-ack) while the server is full", status)
		}
	}
	if a.timeouts != 0 || a.slowest > pushDeadline {
		t.Errorf("%d attempts without an answer, slowest answer %v; want every answer within the %v push deadline", a.timeouts, a.slowest, pushDeadline)
	}
	t.Logf("max_connections %d: other clients held %d slots (peak %d); during 6s full: %d non-ack answers %v, %d batches committed after the first 2s; slowest answer %v; caught up %v after the slots freed; %d rows, each once",
		maxConns, held, peak, duringFull.nonAck, statusesFull, storedFull, a.slowest.Round(time.Millisecond), caughtUp.Round(time.Millisecond), len(warm)+n)
}

// crowd is other clients of the same server, holding connections.
type crowd struct {
	dsn   string
	mu    sync.Mutex
	conns []*pgx.Conn
	peak  int
}

func newCrowd(dsn string) *crowd { return &crowd{dsn: dsn} }

// fill opens connections until the server refuses one for lack of slots
// (too_many_connections) and returns how many it holds.
func (c *crowd) fill(ctx context.Context) (int, error) {
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				full, err := c.open(ctx)
				if full || err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return 0, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.conns), nil
}

// open opens one connection; full reports a refusal for lack of slots.
func (c *crowd) open(ctx context.Context) (full bool, err error) {
	conn, err := pgx.Connect(ctx, c.dsn)
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == pgerrcode.TooManyConnections {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("crowd: connect: %w", err)
	}
	c.mu.Lock()
	c.conns = append(c.conns, conn)
	c.peak = max(c.peak, len(c.conns))
	c.mu.Unlock()
	return false, nil
}

// keepFull takes every slot that frees up until stop is closed.
func (c *crowd) keepFull(ctx context.Context, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		if full, _ := c.open(ctx); full {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// release closes every connection and returns the most held at once.
func (c *crowd) release() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		_ = conn.Close(context.Background())
	}
	c.conns = nil
	return c.peak
}

// TestNetworkPartition holds every byte between ingest and the database for
// 30 s, far longer than the statement timeout (5 s), while records stream
// in: no connection is refused and nothing answers, so only ingest's own
// deadlines end its waits. Every delivery is answered within the push
// deadline, and when the network heals the same process catches up,
// storing everything once, with no more connections than its pool allows.
func TestNetworkPartition(t *testing.T) { eachParallel(t, testNetworkPartition) }

func testNetworkPartition(t *testing.T, tg *target) {
	const hold = 30 * time.Second
	h := newHarness(t, tg)
	proxy, via := testkit.NewProxy(t, h.ingestDSN)
	ing, _, _ := h.startIngest(t, "DATABASE_URL="+via, "DB_STATEMENT_TIMEOUT=5s", "DB_MAX_CONNS=8")
	relay, rec := h.relay(t, h.sub, ing.URL, nil)

	const n = 4000
	msgs := h.calls(t, n)
	wait := h.publishAsync(t, h.topic, msgs, 300)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := h.db.WaitCount(ctx, n/8, "SELECT count(*) FROM apigee.api_calls"); err != nil {
		t.Fatal(err)
	}
	proxy.Hold()
	time.Sleep(hold)
	during := answered(rec)
	statusesHeld := rec.Statuses()
	storedHeld := h.count(t, "SELECT count(*) FROM apigee.api_calls")
	proxy.Restore()
	healed := time.Now()

	wait()
	var firstCommit time.Time
	waitAcked(t, relay, n, 90*time.Second)
	caughtUp := time.Since(healed)
	if err := h.db.Admin.QueryRow(context.Background(),
		"SELECT coalesce(min(committed_at), now()) FROM apigee.ingest_batches WHERE committed_at > $1", healed).Scan(&firstCommit); err != nil {
		t.Fatal(err)
	}
	h.assertStoredOnce(t, msgs)
	alive(t, ing)
	// The connections given up during the partition are gone on the
	// server too once it heals (their close was held back with the rest).
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var conns int64
	for {
		conns = h.count(t, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'reliability-ingest'", h.db.Name)
		if conns <= 8 || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	a := answered(rec)
	if during.nonAck == 0 {
		t.Fatalf("no non-ack answer during the partition (statuses %v)", statusesHeld)
	}
	if a.timeouts != 0 || a.slowest > pushDeadline {
		t.Errorf("%d attempts without an answer, slowest %v; want every answer within the %v push deadline", a.timeouts, a.slowest, pushDeadline)
	}
	if conns > 8 {
		t.Errorf("%d ingest connections on the server after healing; its pool allows 8", conns)
	}
	t.Logf("partition of %v (statement timeout 5s) with %d rows stored: %d non-ack answers %v during it, slowest answer %v; first commit %v after healing, caught up in %v, same pid %d; %d ingest connections after; %d rows, each once",
		hold, storedHeld, during.nonAck, statusesHeld, a.slowest.Round(time.Millisecond), firstCommit.Sub(healed).Round(time.Millisecond), caughtUp.Round(time.Millisecond), ing.PID(), conns, n)
}

// TestFailoverWithRotation takes the database away (connections cut, as a
// failover does), rotates the ingest password while it is away (a new
// password in the database, a new version of the secret), restarts the
// server and lets ingest back in: it logs in with the new secret version
// by itself and stores every record once.
func TestFailoverWithRotation(t *testing.T) { each(t, testFailoverWithRotation) }

func testFailoverWithRotation(t *testing.T, tg *target) {
	h := newHarness(t, tg)
	ctx := context.Background()
	sm, err := stack.StartSecretManager()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sm.Stop)
	secret := "projects/reliability/secrets/ingest-db"
	role := "rel_failover_" + stack.RandomSuffix(4)
	dsn1, err := h.db.Login(ctx, role, stack.RandomSuffix(16), "apigee_ingest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.db.DropRole(context.Background(), role) })
	proxy, via := testkit.NewProxy(t, dsn1)
	creds, err := stack.Credentials(via, role, passwordOf(t, dsn1))
	if err != nil {
		t.Fatal(err)
	}
	v1, err := sm.PutCredentials(secret, creds)
	if err != nil {
		t.Fatal(err)
	}
	logs := &stack.SyncBuffer{}
	dumpOnFailure(t, "ingest", logs)
	port, err := stack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ing := h.ingestProcess(t, port, logs, "DB_SECRET="+secret, "SECRET_MANAGER_ENDPOINT="+sm.Addr)
	relay, rec := h.relay(t, h.sub, ing.URL, nil)

	const n = 6000
	msgs := h.calls(t, n)
	wait := h.publishAsync(t, h.topic, msgs, 800)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := h.db.WaitCount(wctx, n/4, "SELECT count(*) FROM apigee.api_calls"); err != nil {
		t.Fatal(err)
	}
	proxy.Cut()
	down := time.Now()
	pw2 := stack.RandomSuffix(16)
	if _, err := h.db.Login(ctx, role, pw2, "apigee_ingest"); err != nil {
		t.Fatal(err)
	}
	creds.Password = pw2
	v2, err := sm.PutCredentials(secret, creds)
	if err != nil {
		t.Fatal(err)
	}
	atFailover := h.count(t, "SELECT count(*) FROM apigee.api_calls")
	restartCluster(t, tg)
	waitServer(t, h)
	proxy.Restore()
	back := time.Now()

	wait()
	waitAcked(t, relay, n, 60*time.Second)
	h.assertStoredOnce(t, msgs)
	alive(t, ing)
	after := h.count(t, "SELECT count(*) FROM apigee.ingest_batches WHERE ingest_role = $1 AND committed_at > $2", role, back)
	if after == 0 {
		t.Fatalf("no batch committed as %s after the failover", role)
	}
	// The old password is dead, so those batches were written with v2's.
	_, err = pgx.Connect(ctx, dsn1)
	if !dbconn.IsAuthError(err) {
		t.Fatalf("the old password still logs in (err %v): the rotation did not happen", err)
	}
	st := relay.Stats()
	t.Logf("failover at %d of %d rows, outage %v, password rotated %s → %s during it; %d batches committed after, with the new version; relay %d acked, %d non-ack/failed attempts %v; same pid %d; %d rows, each once",
		atFailover, n, back.Sub(down).Round(time.Millisecond), lastPart(v1), lastPart(v2), after, st.Acked, st.Nacked, rec.Statuses(), ing.PID(), n)
}

// waitServer waits until the restarted server answers the admin pool.
func waitServer(t *testing.T, h *harness) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := h.db.Admin.Ping(context.Background())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("database not back after the restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func passwordOf(t *testing.T, dsn string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Password
}

func lastPart(name string) string {
	for i := len(name) - 1; i >= 0; i-- {
		if name[i] == '/' {
			return name[i+1:]
		}
	}
	return name
}
