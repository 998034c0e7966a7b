// Command rotate runs the rotate function locally, as Cloud Run would:
//
//	go run ./functions/rotate/cmd/rotate
//
// serves Rotate at / on $PORT (default 8080). Configure it with the
// variables of rotate.ConfigFromEnv (ROTATE_SECRET, ...) and shared/dbconn
// (DATABASE_URL or DB_SECRET, SECRET_MANAGER_ENDPOINT for a local Secret
// Manager), then trigger a rotation with `curl -X POST localhost:8080/`.
package main

import (
	"os"

	_ "apigee-timescale/functions/rotate"
	"apigee-timescale/shared/function"
	"apigee-timescale/shared/logging"
)

func main() {
	if err := function.Main("Rotate"); err != nil {
		logging.Stdout().Error("rotate: exit", logging.Err(err))
		os.Exit(1)
	}
}
