// Command cmd runs the rotate function locally, as Cloud Run would:
//
//	go run ./functions/rotate/cmd/rotate
//
// serves Rotate at / on $PORT (default 8080). Configure it with the
// variables of rotate.ConfigFromEnv (ROTATE_SECRET, ...) and shared/dbconn
// (DATABASE_URL or DB_SECRET, SECRET_MANAGER_ENDPOINT for a local Secret
// Manager), then trigger a rotation with `curl -X POST localhost:8080/`.
package main

import (
	"log"
	"os"

	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"

	_ "apigee-timescale/functions/rotate"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if os.Getenv("FUNCTION_TARGET") == "" {
		os.Setenv("FUNCTION_TARGET", "Rotate")
	}
	if err := funcframework.Start(port); err != nil {
		log.Fatalf("funcframework.Start: %v", err)
	}
}
