// Command cmd runs the ingest functions locally, as Cloud Run would:
//
//	go run ./functions/ingest/cmd/ingest
//
// serves Ingest at / on $PORT (default 8080); FUNCTION_TARGET=IngestEvent
// serves the CloudEvent function instead.
package main

import (
	"log"
	"os"

	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"

	_ "apigee-timescale/functions/ingest"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if os.Getenv("FUNCTION_TARGET") == "" {
		os.Setenv("FUNCTION_TARGET", "Ingest")
	}
	if err := funcframework.Start(port); err != nil {
		log.Fatalf("funcframework.Start: %v", err)
	}
}
