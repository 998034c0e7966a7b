// Command verify checks the tamper evidence of the database at
// DATABASE_URL: it recomputes every batch's rows_sha256 from the rows
// stored now and the seal chain from its first batch (shared/audit), and
// prints one line.
//
//	verify                      exit 0: intact; 1: tampered, naming the first bad batch and how; 2: could not check
//	verify -head 1234:9f86d0…   also require the chain to pass through that seal (a head from the rollup's log)
//
// It reads as any role that may read apigee.api_calls, apigee.ingest_batches
// and the audit tables (the owner, or a login in apigee_rollup).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/shared/audit"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitIntact   = 0
	exitTampered = 1
	exitError    = 2
)

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	head := fs.String("head", "", "BATCH:SEAL_HEX, a chain head from the rollup's log the chain must still pass through")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return exitError
	}
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		fmt.Fprintln(stderr, "verify: DATABASE_URL is not set")
		return exitError
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		fmt.Fprintf(stderr, "verify: connect: %v\n", err)
		return exitError
	}
	defer conn.Close(context.WithoutCancel(ctx))
	start := time.Now()
	rep, err := audit.Verify(ctx, conn, audit.Options{Orphans: true})
	if err != nil {
		fmt.Fprintf(stderr, "verify: %v\n", err)
		return exitError
	}
	if rep.Problem == nil && *head != "" {
		rep.Problem, err = checkHead(ctx, conn, *head)
		if err != nil {
			fmt.Fprintf(stderr, "verify: %v\n", err)
			return exitError
		}
	}
	elapsed := time.Since(start)
	if *asJSON {
		_ = json.NewEncoder(stdout).Encode(rep)
	} else {
		printReport(stdout, rep, elapsed)
	}
	if rep.Problem != nil {
		return exitTampered
	}
	return exitIntact
}

func printReport(w io.Writer, rep audit.Report, elapsed time.Duration) {
	rate := float64(rep.Rows) / max(elapsed.Seconds(), 1e-9)
	if rep.Problem != nil {
		fmt.Fprintf(w, "TAMPERED: %s (checked %d batches, %d rows)\n", rep.Problem, rep.Batches, rep.Rows)
		return
	}
	fmt.Fprintf(w, "intact: %d batches, %d rows (%d partly or wholly retained, %d not sealed yet), head batch %d seal %s; %.0f rows/s\n",
		rep.Batches, rep.Rows, rep.Retained, rep.Unsealed, rep.HeadBatch, rep.HeadSeal, rate)
}

// checkHead compares the stored seal of a logged head's batch with the
// logged value: rewriting the whole chain after a batch changes it.
func checkHead(ctx context.Context, conn *pgx.Conn, head string) (*audit.Problem, error) {
	idText, sealHex, ok := strings.Cut(head, ":")
	id, err := strconv.ParseInt(idText, 10, 64)
	if !ok || err != nil {
		return nil, fmt.Errorf("-head %q is not BATCH:SEAL_HEX", head)
	}
	var seal []byte
	err = conn.QueryRow(ctx, "SELECT seal FROM apigee.audit_seals WHERE batch_id = $1", id).Scan(&seal)
	if err == pgx.ErrNoRows {
		return &audit.Problem{BatchID: id, Kind: audit.MissingBatch, Detail: "the logged head's seal is gone"}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read seal of batch %d: %w", id, err)
	}
	if fmt.Sprintf("%x", seal) != strings.ToLower(sealHex) {
		return &audit.Problem{BatchID: id, Kind: audit.BrokenLink, Detail: "the chain no longer passes through the logged head: it was rewritten"}, nil
	}
	return nil, nil
}
