//go:build reliability

package reliability

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/deploy/local/simulator"
	"apigee-timescale/deploy/local/stack"
	"apigee-timescale/deploy/local/standin/pushrelay"
)

// TestDatabaseRestartDuringLoad restarts the database server while records
// stream in: ingest answers non-ack while it is down, the relay retries,
// and in the end every record is stored exactly once.
func TestDatabaseRestartDuringLoad(t *testing.T) { each(t, testDatabaseRestartDuringLoad) }

func testDatabaseRestartDuringLoad(t *testing.T, tg *target) {
	h := newHarness(t, tg)
	ing, _, _ := h.startIngest(t)
	relay, rec := h.relay(t, h.sub, ing.URL, nil)

	const n = 6000
	msgs := h.calls(t, n)
	var startedBefore time.Time
	if err := h.db.Admin.QueryRow(context.Background(), "SELECT pg_postmaster_start_time()").Scan(&startedBefore); err != nil {
		t.Fatal(err)
	}
	wait := h.publishAsync(t, h.topic, msgs, 1000)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := h.db.WaitCount(ctx, n/4, "SELECT count(*) FROM apigee.api_calls"); err != nil {
		t.Fatal(err)
	}
	restartCluster(t, tg)
	// The admin pool's connections died with the server; pgxpool replaces them.
	var startedAfter time.Time
	var atRestart int64
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := h.db.Admin.QueryRow(context.Background(),
			"SELECT pg_postmaster_start_time(), (SELECT count(*) FROM apigee.api_calls)").Scan(&startedAfter, &atRestart)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("database not back after the restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !startedAfter.After(startedBefore) {
		t.Fatalf("postmaster start time %v not after %v: the server did not restart", startedAfter, startedBefore)
	}
	if atRestart >= n {
		t.Fatalf("all %d records were stored before the restart; it did not happen during load", atRestart)
	}

	wait()
	waitAcked(t, relay, n, 60*time.Second)
	h.assertStoredOnce(t, msgs)
	st := relay.Stats()
	t.Logf("restart with %d of %d rows stored; relay: %d acked, %d failed attempts (%v), %d retried; ingest still pid %d",
		atRestart, n, st.Acked, st.Nacked, rec.Statuses(), st.Retried, ing.PID())
	if st.Nacked == 0 {
		t.Errorf("no delivery failed while the database restarted: the test did not exercise the outage")
	}
	select {
	case <-ing.Done():
		t.Errorf("ingest exited during the outage: %v", ing.ExitErr())
	default:
	}
}

// multiply is a transport that sends every request n times at once, as a
// storm of concurrent redeliveries would, and answers with the first
// failure, or else the first acknowledgement.
type multiply struct {
	next http.RoundTripper
	n    int
}

func (m multiply) RoundTrip(req *http.Request) (*http.Response, error) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, err
	}
	type result struct {
		resp *http.Response
		err  error
	}
	results := make([]result, m.n)
	var wg sync.WaitGroup
	for i := range m.n {
		r := req.Clone(req.Context())
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := m.next.RoundTrip(r)
			results[i] = result{resp, err}
		}()
	}
	wg.Wait()
	pick := -1
	for i, r := range results {
		if r.err != nil || !(stack.Attempt{Status: r.resp.StatusCode}).Acked() {
			pick = i
			break
		}
	}
	if pick < 0 {
		pick = 0
	}
	for i, r := range results {
		if i != pick && r.resp != nil {
			_, _ = io.Copy(io.Discard, r.resp.Body)
			_ = r.resp.Body.Close()
		}
	}
	return results[pick].resp, results[pick].err
}

// TestDuplicateStorm delivers every message three times concurrently, and
// publishes a share of the records twice (a publisher retry: a new Pub/Sub
// message ID, the same record): each record is stored once.
func TestDuplicateStorm(t *testing.T) { each(t, testDuplicateStorm) }

func testDuplicateStorm(t *testing.T, tg *target) {
	h := newHarness(t, tg)
	ing, _, _ := h.startIngest(t)
	rec := stack.NewRecorder(nil)
	relay, _ := h.relay(t, h.sub, ing.URL, func(c *pushrelay.Config) {
		c.HTTPClient = &http.Client{Transport: multiply{next: rec, n: 3}}
	})

	const n = 4000
	msgs := h.calls(t, n)
	all := append([]simulator.Message(nil), msgs...)
	for i := 0; i < n; i += 10 {
		all = append(all, msgs[i]) // 400 publisher retries
	}
	pubs, err := h.publish(context.Background(), h.topic, all, 0)
	if err != nil {
		t.Fatal(err)
	}
	waitAcked(t, relay, int64(len(pubs)), 60*time.Second)

	h.assertStoredOnce(t, msgs)
	var inserted, duplicates int64
	if err := h.db.Admin.QueryRow(context.Background(),
		"SELECT coalesce(sum(rows_inserted), 0), coalesce(sum(rows_duplicate), 0) FROM apigee.ingest_batches").Scan(&inserted, &duplicates); err != nil {
		t.Fatal(err)
	}
	var deliveries, acked int64
	for id, as := range rec.All() {
		if len(as) < 3 {
			t.Fatalf("message %s delivered %d times, want at least 3", id, len(as))
		}
		deliveries += int64(len(as))
		for _, a := range as {
			if a.Acked() {
				acked++
			}
		}
	}
	// Each of the 4,400 messages was delivered at least 3 times: every
	// acknowledged delivery offered its record, only 4,000 were new, and
	// the rest were absorbed as duplicates. A delivery answered non-ack
	// (the request timed out in a busy moment) may still have committed,
	// hence the range.
	if inserted != n || inserted+duplicates < acked || inserted+duplicates > deliveries {
		t.Fatalf("batches: %d inserted + %d duplicates, want %d inserted and %d–%d offered (statuses %v)",
			inserted, duplicates, n, acked, deliveries, rec.Statuses())
	}
	t.Logf("%d messages (%d publisher retries) delivered %d times (statuses %v): %d rows, %d duplicates absorbed; transport errors %v",
		len(pubs), len(all)-n, deliveries, rec.Statuses(), inserted, duplicates, transportErrors(rec))
}

// TestMalformedFlood mixes 10,000 malformed messages of every kind into
// good traffic: each is quarantined with its reason and acknowledged at
// the first attempt, and every good record is stored.
func TestMalformedFlood(t *testing.T) { each(t, testMalformedFlood) }

func testMalformedFlood(t *testing.T, tg *target) {
	h := newHarness(t, tg)
	ing, _, _ := h.startIngest(t)
	relay, rec := h.relay(t, h.sub, ing.URL, nil)

	const good, bad = 5000, 10000
	goodMsgs := h.calls(t, good)
	var msgs []simulator.Message
	at := time.Now().Add(-10 * time.Minute)
	for i := range bad {
		m, err := h.gen.Malformed(at, simulator.MalformedKinds[i%len(simulator.MalformedKinds)])
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
		if i%2 == 1 {
			msgs = append(msgs, goodMsgs[i/2])
		}
	}
	pubs, err := h.publish(context.Background(), h.topic, msgs, 0)
	if err != nil {
		t.Fatal(err)
	}
	waitAcked(t, relay, good+bad, 90*time.Second)

	st := relay.Stats()
	if st.Acked != good+bad || st.Nacked != 0 || st.Retried != 0 {
		t.Fatalf("relay: %+v (statuses %v); want every message acknowledged at the first attempt", st, rec.Statuses())
	}
	h.assertStoredOnce(t, goodMsgs)

	type want struct{ reason, field string }
	expected := map[string]want{}
	for _, p := range pubs {
		if p.msg.Malformed != 0 {
			r, f := p.msg.Malformed.Expect()
			expected[p.id] = want{r, f}
		}
	}
	rows, err := h.db.Admin.Query(context.Background(),
		"SELECT pubsub_message_id, reason, coalesce(field, '') FROM apigee.ingest_rejects")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]want{}
	var id string
	var w want
	if _, err := pgx.ForEachRow(rows, []any{&id, &w.reason, &w.field}, func() error {
		if _, dup := got[id]; dup {
			return fmt.Errorf("message %s quarantined twice", id)
		}
		got[id] = w
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != bad {
		t.Fatalf("%d rejects, want %d", len(got), bad)
	}
	byReason := map[string]int{}
	for id, w := range expected {
		if got[id] != w {
			t.Fatalf("message %s quarantined as %+v, want %+v", id, got[id], w)
		}
		byReason[w.reason+"/"+w.field]++
	}
	t.Logf("%d good stored, %d malformed quarantined: %v", good, bad, byReason)
}

// TestSIGTERMDuringLoad stops the ingest process with SIGTERM while
// records stream in, as Cloud Run does when it scales in: every message
// it acknowledged is stored by the time it exits, and what it did not
// acknowledge is redelivered to the next instance and stored once.
func TestSIGTERMDuringLoad(t *testing.T) { each(t, testSIGTERMDuringLoad) }

func testSIGTERMDuringLoad(t *testing.T, tg *target) {
	h := newHarness(t, tg)
	first, port, logs := h.startIngest(t, "INGEST_DRAIN_TIMEOUT=8s")
	relay, rec := h.relay(t, h.sub, first.URL, nil)

	const n = 8000
	msgs := h.calls(t, n)
	wait := h.publishAsync(t, h.topic, msgs, 1500)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := h.db.WaitCount(ctx, n/4, "SELECT count(*) FROM apigee.api_calls"); err != nil {
		t.Fatal(err)
	}
	if err := first.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("ingest did not exit within 15s of SIGTERM")
	}
	if err := first.ExitErr(); err != nil {
		t.Fatalf("ingest exit after SIGTERM: %v (want a clean drain)", err)
	}

	// Nothing the first instance acknowledged may be missing.
	pubs := wait()
	recordOf := map[string]string{}
	for _, p := range pubs {
		recordOf[p.id] = p.msg.Call.MessageID
	}
	acked := rec.Acked()
	var ackedRecords []string
	for id := range acked {
		ackedRecords = append(ackedRecords, recordOf[id])
	}
	missing := h.count(t, `SELECT count(*) FROM unnest($1::text[]) AS w(id)
		WHERE NOT EXISTS (SELECT 1 FROM apigee.api_calls c WHERE c.message_id = w.id)`, ackedRecords)
	if missing != 0 || len(ackedRecords) == 0 || len(ackedRecords) >= n {
		t.Fatalf("%d of %d messages acknowledged before exit are not stored (of %d)", missing, len(ackedRecords), n)
	}

	// The next instance on the same address gets the rest.
	second := h.ingestProcess(t, port, logs)
	waitAcked(t, relay, n, 60*time.Second)
	h.assertStoredOnce(t, msgs)
	redelivered := 0
	for _, as := range rec.All() {
		if len(as) > 1 {
			redelivered++
		}
	}
	if redelivered == 0 {
		t.Errorf("no message was redelivered: SIGTERM did not interrupt any delivery")
	}
	t.Logf("SIGTERM after %d of %d acknowledged; %d messages redelivered to pid %d; statuses %v; transport errors %v",
		len(ackedRecords), n, redelivered, second.PID(), rec.Statuses(), summarize(transportErrors(rec)))
}

// TestSlowDatabase holds an exclusive lock on apigee.api_calls for
// seconds under load, from the relay and from a flood of large deliveries
// posted straight to ingest (a big backlog pushed by several
// subscriptions): ingest answers non-ack within its request timeout
// (before the push deadline), refuses what exceeds its queue at once, its
// memory stays bounded, and once the lock goes it catches up by itself.
func TestSlowDatabase(t *testing.T) { each(t, testSlowDatabase) }

func testSlowDatabase(t *testing.T, tg *target) {
	h := newHarness(t, tg)
	const requestTimeout = 2 * time.Second
	ing, _, _ := h.startIngest(t,
		"INGEST_REQUEST_TIMEOUT="+requestTimeout.String(),
		"INGEST_WRITE_TIMEOUT=3s",
		"INGEST_QUEUE_MAX_ROWS=5000",
	)
	relay, rec := h.relay(t, h.sub, ing.URL, func(c *pushrelay.Config) {
		c.AckDeadline = 5 * time.Second
		c.MaxInFlight = 100
	})

	// Warm up, then measure the resting size.
	warm := h.calls(t, 500)
	if _, err := h.publish(context.Background(), h.topic, warm, 0); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, relay, int64(len(warm)), 30*time.Second)
	base, err := ing.RSS()
	if err != nil {
		t.Fatal(err)
	}
	const n = 6000
	msgs := h.calls(t, n)
	floodMsgs := h.calls(t, 100*100)

	// Take the lock, then load.
	ctx := context.Background()
	lock, err := h.db.Admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, "LOCK TABLE apigee.api_calls IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	var peak atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if rss, err := ing.RSS(); err == nil && rss > peak.Load() {
				peak.Store(rss)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	lockedAt := time.Now()
	wait := h.publishAsync(t, h.topic, msgs, 1500)
	stopFlood := make(chan struct{})
	floodDone := make(chan floodResult, 1)
	go func() { floodDone <- flood(ing.URL, floodMsgs, 100, 80, stopFlood) }()
	time.Sleep(6 * time.Second)
	storedDuringLock := h.count(t, "SELECT count(*) FROM apigee.ingest_batches WHERE committed_at > $1", lockedAt)
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	time.Sleep(time.Second) // the flood's retries get in too
	close(stopFlood)
	fl := <-floodDone
	wait()
	waitAcked(t, relay, int64(len(warm)+n), 90*time.Second)
	caughtUp := time.Since(released)
	close(stopSampling)
	<-sampled

	// The relay's records once each; the flood's acknowledged ones too
	// (an unacknowledged one may have been committed after its answer,
	// as with any push), and nothing else.
	relayed := append(warm, msgs...)
	var relayIDs []string
	for _, m := range relayed {
		relayIDs = append(relayIDs, m.Call.MessageID)
	}
	var floodIDs []string
	for _, m := range floodMsgs {
		floodIDs = append(floodIDs, m.Call.MessageID)
	}
	var rows, distinct, relayMissing, ackedMissing, floodStored int64
	if err := h.db.Admin.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM apigee.api_calls), (SELECT count(DISTINCT message_id) FROM apigee.api_calls),
		       (SELECT count(*) FROM unnest($1::text[]) w(id) WHERE NOT EXISTS (SELECT 1 FROM apigee.api_calls c WHERE c.message_id = w.id)),
		       (SELECT count(*) FROM unnest($2::text[]) w(id) WHERE NOT EXISTS (SELECT 1 FROM apigee.api_calls c WHERE c.message_id = w.id)),
		       (SELECT count(*) FROM apigee.api_calls c WHERE c.message_id = ANY($3))`,
		relayIDs, fl.ackedIDs, floodIDs).Scan(&rows, &distinct, &relayMissing, &ackedMissing, &floodStored); err != nil {
		t.Fatal(err)
	}
	if relayMissing != 0 || ackedMissing != 0 || rows != distinct || rows != int64(len(relayIDs))+floodStored {
		t.Fatalf("api_calls: %d rows (%d distinct); %d relayed and %d acknowledged flood records missing; %d flood records stored",
			rows, distinct, relayMissing, ackedMissing, floodStored)
	}
	if storedDuringLock != 0 {
		t.Errorf("%d batches committed while the table was locked", storedDuringLock)
	}
	// Every answer came within the request timeout plus slack for a busy
	// machine, before the push deadline (5s): no delivery hit the relay's
	// timeout.
	var slowest time.Duration
	var nonAck, timeouts int
	for _, as := range rec.All() {
		for _, a := range as {
			slowest = max(slowest, a.Took)
			if a.Status == 0 {
				timeouts++
			} else if !a.Acked() {
				nonAck++
			}
		}
	}
	slowest = max(slowest, fl.slowest)
	if timeouts != 0 || fl.errors != 0 || slowest > requestTimeout+2*time.Second {
		t.Errorf("%d relay and %d flood requests without an answer, slowest answer %v; want every answer within %v",
			timeouts, fl.errors, slowest, requestTimeout+2*time.Second)
	}
	if nonAck == 0 || fl.statuses[http.StatusTooManyRequests] == 0 {
		t.Errorf("relay non-acks %d, flood statuses %v: want non-acks and queue-full refusals while the table was locked", nonAck, fl.statuses)
	}
	const bound = 256 << 20
	if peak.Load() > bound {
		t.Errorf("ingest RSS peaked at %d MiB (resting %d MiB); want under %d MiB", peak.Load()>>20, base>>20, bound>>20)
	}
	select {
	case <-ing.Done():
		t.Fatalf("ingest exited: %v", ing.ExitErr())
	default:
	}
	t.Logf("lock held 6s: relay %d non-ack answers %v; flood of 100-record deliveries on 80 connections %v (%d records acknowledged); slowest answer %v; RSS %d→%d MiB; caught up %v after release",
		nonAck, rec.Statuses(), fl.statuses, len(fl.ackedIDs), slowest.Round(time.Millisecond), base>>20, peak.Load()>>20, caughtUp.Round(time.Millisecond))
}

// floodResult is what a flood saw.
type floodResult struct {
	statuses map[int]int
	errors   int
	slowest  time.Duration
	ackedIDs []string // records of acknowledged deliveries
}

// flood posts msgs in deliveries of per records (newline-delimited, one
// wrapped envelope each) from workers connections until stop is closed,
// retrying a refused delivery after a short pause as a push subscription
// would.
func flood(url string, msgs []simulator.Message, per, workers int, stop <-chan struct{}) floodResult {
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: workers, MaxIdleConns: 0},
		Timeout:   30 * time.Second,
	}
	var mu sync.Mutex
	res := floodResult{statuses: map[int]int{}}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if (i+1)*per > len(msgs) {
					return
				}
				var data bytes.Buffer
				ids := make([]string, 0, per)
				for _, m := range msgs[i*per : (i+1)*per] {
					data.Write(m.Data)
					data.WriteByte('\n')
					ids = append(ids, m.Call.MessageID)
				}
				body := fmt.Sprintf(`{"message":{"data":%q,"messageId":"flood-%d","publishTime":%q},"subscription":"projects/reliability/subscriptions/flood"}`,
					base64.StdEncoding.EncodeToString(data.Bytes()), i, time.Now().UTC().Format(time.RFC3339Nano))
				for {
					select {
					case <-stop:
						return
					default:
					}
					start := time.Now()
					resp, err := client.Post(url, "application/json", strings.NewReader(body))
					took := time.Since(start)
					mu.Lock()
					res.slowest = max(res.slowest, took)
					if err != nil {
						res.errors++
						mu.Unlock()
						return
					}
					res.statuses[resp.StatusCode]++
					acked := resp.StatusCode == http.StatusNoContent
					if acked {
						res.ackedIDs = append(res.ackedIDs, ids...)
					}
					mu.Unlock()
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if acked {
						break
					}
					select {
					case <-stop:
						return
					case <-time.After(100 * time.Millisecond):
					}
				}
			}
		}()
	}
	wg.Wait()
	return res
}
