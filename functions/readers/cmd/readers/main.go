// Command readers runs the readers function locally:
//
//	go run ./functions/readers/cmd/readers            # serves SyncReaders at / on $PORT (8080)
//	go run ./functions/readers/cmd/readers -once      # one sync, prints the summary
//	go run ./functions/readers/cmd/readers -dry-run   # one planned sync, changes nothing
//
// Configure it with the variables of readers.ConfigFromEnv
// (READERS_APIGEE_ORG, READERS_APIGEE_ENDPOINT for a stand-in, ...) and
// shared/dbconn (DATABASE_URL, a login in apigee_reader_sync). -once and
// -dry-run exit 1 when the run failed and 3 when an app was refused.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"apigee-timescale/functions/readers"
	"apigee-timescale/shared/function"
	"apigee-timescale/shared/logging"
)

func main() {
	once := flag.Bool("once", false, "run one sync and print its summary instead of serving")
	dry := flag.Bool("dry-run", false, "run one sync that only prints its plan (implies -once)")
	flag.Parse()
	log := logging.Stdout()
	if !*once && !*dry {
		if err := function.Main("SyncReaders"); err != nil {
			log.Error("readers: exit", logging.Err(err))
			os.Exit(1)
		}
		return
	}
	os.Exit(runOnce(*dry))
}

func runOnce(dry bool) int {
	ctx := context.Background()
	svc, err := readers.NewFromEnv(ctx, logging.Stdout())
	if err != nil {
		fmt.Fprintln(os.Stderr, "readers:", err)
		return 1
	}
	defer svc.Close()
	sum, err := svc.Sync(ctx, dry)
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(sum)
	switch {
	case err != nil:
		return 1
	case len(sum.Refused) > 0:
		return 3
	}
	return 0
}
