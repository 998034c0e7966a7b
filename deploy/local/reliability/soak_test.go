//go:build reliability && soak

package reliability

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"apigee-timescale/deploy/local/stack"
)

// Soak settings (`make soak` passes them).
const (
	envSoakDuration     = "SOAK_DURATION"
	defaultSoakDuration = 30 * time.Minute
	envSoakRate         = "SOAK_RATE"
	defaultSoakRate     = 200 // records per second per database
	soakInterval        = time.Minute
	soakMaxConns        = 8 // the ingest pool, DB_MAX_CONNS
)

// TestSoak pushes steady traffic through the relay into one ingest process
// per database for SOAK_DURATION, printing every minute the process's RSS
// and goroutines (the fewest seen in the minute), its open connections, the p99 answer time and the rows
// stored, and at the end whether each stayed flat (a leak grows; a
// sustainable rate keeps the answer time and the rows per minute level).
// It is behind the extra build tag soak: `make soak`, never `make test`.
func TestSoak(t *testing.T) {
	duration, rate := defaultSoakDuration, defaultSoakRate
	if v := os.Getenv(envSoakDuration); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 3*soakInterval {
			t.Fatalf("%s=%q: want a duration of at least %v", envSoakDuration, v, 3*soakInterval)
		}
		duration = d
	}
	if v := os.Getenv(envSoakRate); v != "" {
		r, err := strconv.Atoi(v)
		if err != nil || r < 1 {
			t.Fatalf("%s=%q: want records per second", envSoakRate, v)
		}
		rate = r
	}
	eachParallel(t, func(t *testing.T, tg *target) { soak(t, tg, duration, rate) })
}

// soakSample is one minute's reading.
type soakSample struct {
	rss        int64
	goroutines int
	conns      int64
	p99        time.Duration
	rows       int64 // stored so far
	perMinute  int64 // stored during the minute
}

func soak(t *testing.T, tg *target, duration time.Duration, rate int) {
	h := newHarness(t, tg)
	// The runtime's scheduler trace lists every goroutine of the deployed
	// binary every 10 s; counting them needs no change to the product.
	ing, _, logs := h.startIngest(t, "GODEBUG=schedtrace=10000,scheddetail=1", fmt.Sprintf("DB_MAX_CONNS=%d", soakMaxConns))
	relay, rec := h.relay(t, h.sub, ing.URL, nil)

	// The publisher runs until the last minute has been sampled.
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	published := make(chan int64, 1)
	go func() {
		var n int64
		for ctx.Err() == nil {
			// Five seconds at a time, so the records are rendered as they go.
			p, err := h.publish(context.Background(), h.topic, h.calls(t, 5*rate), float64(rate))
			if err != nil {
				t.Error(err)
				break
			}
			n += int64(len(p))
		}
		published <- n
	}()

	var samples []soakSample
	tick := time.NewTicker(soakInterval)
	defer tick.Stop()
	logSeen := 0
	for minute := 1; minute <= int(duration/soakInterval); minute++ {
		<-tick.C
		s := h.soakSample(t, ing, logs, rec, &logSeen)
		if len(samples) > 0 {
			s.perMinute = s.rows - samples[len(samples)-1].rows
		} else {
			s.perMinute = s.rows
		}
		samples = append(samples, s)
		t.Logf("%s minute %3d: RSS %3d MiB, %3d goroutines, %d connections, p99 answer %6.1f ms, %8d rows stored (+%d)",
			tg.name, minute, s.rss>>20, s.goroutines, s.conns, float64(s.p99.Microseconds())/1000, s.rows, s.perMinute)
	}
	stop()
	n := <-published
	waitAcked(t, relay, n, 2*time.Minute)
	var rows, distinct int64
	if err := h.db.Admin.QueryRow(context.Background(),
		"SELECT count(*), count(DISTINCT message_id) FROM apigee.api_calls").Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if rows != n || distinct != n {
		t.Errorf("%d published, %d rows (%d distinct): want each stored once", n, rows, distinct)
	}
	alive(t, ing)
	t.Logf("%s soak %v at %d/s: %s; %d published, %d rows, each once; relay %+v",
		tg.name, duration, rate, flatness(t, samples, rate), n, rows, relay.Stats())
}

// soakSample reads the current values.
func (h *harness) soakSample(t *testing.T, ing *stack.Process, logs *stack.SyncBuffer, rec *stack.Recorder, logSeen *int) soakSample {
	t.Helper()
	var s soakSample
	var err error
	if s.rss, err = ing.RSS(); err != nil {
		t.Fatal(err)
	}
	log := logs.String()
	s.goroutines = goroutines(log[min(*logSeen, len(log)):])
	*logSeen = len(log)
	s.conns = h.count(t, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'reliability-ingest'", h.db.Name)
	s.rows = h.count(t, "SELECT coalesce(sum(rows_inserted), 0) FROM apigee.ingest_batches")
	// p99 over the attempts of the last minute.
	from := time.Now().Add(-soakInterval)
	var took []time.Duration
	for _, as := range rec.All() {
		for _, a := range as {
			if a.Start.After(from) {
				took = append(took, a.Took)
			}
		}
	}
	if len(took) > 0 {
		slices.Sort(took)
		s.p99 = took[len(took)*99/100]
	}
	return s
}

var (
	schedHeader = regexp.MustCompile(`(?m)^SCHED \d+ms:`)
	schedG      = regexp.MustCompile(`(?m)^\s+G\d+: status=(\d+)`)
)

// goroutines returns the fewest live goroutines (not idle, not dead) in any
// complete scheduler trace of a GODEBUG=scheddetail=1 process log (one
// every 10 s): the floor of the minute. In-flight deliveries come and go,
// each with its goroutines; a leak raises the floor.
func goroutines(log string) int {
	heads := schedHeader.FindAllStringIndex(log, -1)
	least := -1
	for i := 0; i+1 < len(heads); i++ {
		n := 0
		for _, m := range schedG.FindAllStringSubmatch(log[heads[i][0]:heads[i+1][0]], -1) {
			if m[1] != "0" && m[1] != "6" { // _Gidle, _Gdead
				n++
			}
		}
		if least < 0 || n < least {
			least = n
		}
	}
	return least
}

// flatness says for each measure whether it stayed flat. A leak or a
// growing backlog raises a measure for good, whereas a busy moment on a
// shared machine raises it for a minute or two and lets it fall back; so
// the least value of the second half of the run (the first minute, the
// warm-up, left out) is compared with the least of the first half. The
// connections must stay within the pool, and the rows stored per minute
// within 10% of the rate offered.
func flatness(t *testing.T, samples []soakSample, rate int) string {
	t.Helper()
	if len(samples) < 3 {
		t.Errorf("%d samples: too short a soak to judge", len(samples))
		return "too short to judge"
	}
	later := samples[1:]
	first, second := later[:len(later)/2], later[len(later)/2:]
	least := func(ss []soakSample, f func(soakSample) int64) int64 {
		m := f(ss[0])
		for _, s := range ss[1:] {
			m = min(m, f(s))
		}
		return m
	}
	most := func(f func(soakSample) int64) int64 {
		m := f(later[0])
		for _, s := range later[1:] {
			m = max(m, f(s))
		}
		return m
	}
	type measure struct {
		name string
		f    func(soakSample) int64
		ok   func(before, after int64) bool
		unit func(int64) string
	}
	ms := func(v int64) string { return fmt.Sprintf("%.1f ms", float64(time.Duration(v).Microseconds())/1000) }
	measures := []measure{
		{"RSS", func(s soakSample) int64 { return s.rss }, func(b, a int64) bool { return a <= b*5/4+8<<20 },
			func(v int64) string { return fmt.Sprintf("%d MiB", v>>20) }},
		{"goroutines", func(s soakSample) int64 { return int64(s.goroutines) }, func(b, a int64) bool { return b > 0 && a <= b+10 },
			func(v int64) string { return strconv.FormatInt(v, 10) }},
		{"p99", func(s soakSample) int64 { return int64(s.p99) }, func(b, a int64) bool { return a <= 2*b+int64(50*time.Millisecond) }, ms},
	}
	var parts []string
	verdict := func(name string, ok bool, detail string) {
		v := "flat"
		if !ok {
			v = "NOT flat"
			t.Errorf("soak: %s not flat: %s", name, detail)
		}
		parts = append(parts, fmt.Sprintf("%s %s (%s)", name, v, detail))
	}
	for _, m := range measures {
		b, a := least(first, m.f), least(second, m.f)
		verdict(m.name, m.ok(b, a), fmt.Sprintf("least %s in the first half, %s in the second, most %s", m.unit(b), m.unit(a), m.unit(most(m.f))))
	}
	conns := most(func(s soakSample) int64 { return s.conns })
	verdict("connections", conns <= soakMaxConns, fmt.Sprintf("most %d, pool %d", conns, soakMaxConns))
	want := int64(rate) * int64(soakInterval/time.Second)
	lo := least(later, func(s soakSample) int64 { return s.perMinute })
	hi := most(func(s soakSample) int64 { return s.perMinute })
	verdict("rows/min", lo >= want*9/10 && hi <= want*11/10, fmt.Sprintf("%d–%d per minute, offered %d", lo, hi, want))
	return strings.Join(parts, ", ")
}
