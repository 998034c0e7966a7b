// Command ingest runs the ingest functions locally, as Cloud Run would:
//
//	go run ./functions/ingest/cmd/ingest
//
// serves Ingest at / on $PORT (default 8080); FUNCTION_TARGET=IngestEvent
// serves the CloudEvent function instead. SIGTERM drains what is queued,
// then the command exits: 0 when everything acknowledged is committed.
package main

import (
	"os"

	_ "apigee-timescale/functions/ingest"
	"apigee-timescale/shared/function"
	"apigee-timescale/shared/logging"
)

func main() {
	if err := function.Main("Ingest"); err != nil {
		logging.Stdout().Error("ingest: exit", logging.Err(err))
		os.Exit(1)
	}
}
