// Command cmd publishes simulated Apigee traffic to a Pub/Sub topic, each
// record rendered exactly as the apigee-timescale-publish shared flow
// renders it:
//
//	PUBSUB_EMULATOR_HOST=localhost:8085 go run ./deploy/local/cmd/simulator \
//	    -project my-project -topic apigee-calls -rate 600 -duration 35s
//
// Without PUBSUB_EMULATOR_HOST it publishes to real Pub/Sub with
// Application Default Credentials. With -database-url (a URL that may
// read apigee.ingest_batches) the progress line also shows what ingest
// has stored. `make demo` runs the same simulator in process.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/simulator"
)

func main() {
	project := flag.String("project", "apigee-demo", "Google Cloud project of the topic")
	topic := flag.String("topic", "apigee-calls", "topic ID or projects/P/topics/T")
	rate := flag.Float64("rate", 600, "mean records per second (the diurnal shape varies it from about half to twice that)")
	duration := flag.Duration("duration", 35*time.Second, "how long to publish")
	span := flag.Duration("span", 90*time.Minute, "event time covered, ending now")
	seed := flag.Uint64("seed", 0, "traffic seed (0: random)")
	malformed := flag.Float64("malformed", 0.002, "share of malformed messages (negative: none)")
	duplicates := flag.Float64("duplicates", 0.02, "share of records published twice, as publisher retries (negative: none)")
	noSpikes := flag.Bool("no-spikes", false, "inject no error or latency spike")
	dbURL := flag.String("database-url", "", "optional: database to count stored rows in, for the progress line")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *project, *topic, *dbURL, simulator.Config{
		Rate: *rate, Duration: *duration, Span: *span, Seed: *seed,
		MalformedShare: *malformed, DuplicateShare: *duplicates,
		Spikes: func() []simulator.Spike {
			if *noSpikes {
				return []simulator.Spike{}
			}
			return nil
		}(),
	}); err != nil {
		fmt.Fprintln(os.Stderr, "simulator:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, project, topic, dbURL string, cfg simulator.Config) error {
	var pool *pgxpool.Pool
	if dbURL != "" {
		var err error
		if pool, err = pgxpool.New(ctx, dbURL); err != nil {
			return err
		}
		defer pool.Close()
	}
	start := time.Now()
	cfg.Progress = func(st simulator.Stats) {
		stored := "-"
		if pool != nil {
			qctx, cancel := context.WithTimeout(ctx, time.Second)
			var n int64
			if err := pool.QueryRow(qctx, "SELECT coalesce(sum(rows_inserted), 0) FROM apigee.ingest_batches WHERE committed_at >= $1", start).Scan(&n); err == nil {
				stored = fmt.Sprint(n)
			}
			cancel()
		}
		fmt.Fprintf(os.Stderr, "\r\033[Ksent %d (%.0f/s) · published %d · stored %s · malformed %d · publisher retries %d · event time %s",
			st.Sent, float64(st.Sent)/max(st.Elapsed.Seconds(), 0.001), st.Published, stored, st.Malformed, st.Duplicates,
			st.EventTime.UTC().Format("15:04"))
	}
	sim, err := simulator.New(cfg)
	if err != nil {
		return err
	}
	from, to := sim.Window()
	fmt.Fprintf(os.Stderr, "run %s: event time %s–%s UTC\n", sim.RunID(), from.Format("15:04"), to.Format("15:04"))
	for _, s := range sim.Spikes() {
		fmt.Fprintf(os.Stderr, "injected: %s\n", s)
	}
	client, err := pubsub.NewClient(ctx, project)
	if err != nil {
		return err
	}
	defer client.Close()
	pub := client.Publisher(topic)
	st, err := sim.Run(ctx, pub)
	pub.Stop()
	fmt.Fprintf(os.Stderr, "\n%d published (%d calls, %d malformed %v, %d publisher retries), %d failed\n",
		st.Published, st.Calls, st.Malformed, st.MalformedByReason, st.Duplicates, st.Failed)
	return err
}
