// Command main serves the Rollup function locally or in a container:
// PORT (default 8080) is the listening port, and FUNCTION_TARGET (default
// Rollup) selects the function served at "/". Without a target the
// functions framework would serve it at /Rollup only.
package main

import (
	"log/slog"
	"os"

	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"

	_ "apigee-timescale/functions/rollup"
	"apigee-timescale/shared/logging"
)

func main() {
	log := logging.New(os.Stderr, slog.LevelInfo)
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if os.Getenv("FUNCTION_TARGET") == "" {
		if err := os.Setenv("FUNCTION_TARGET", "Rollup"); err != nil {
			log.Error("rollup: set FUNCTION_TARGET", "error", err.Error())
			os.Exit(1)
		}
	}
	if err := funcframework.Start(port); err != nil {
		log.Error("rollup: serve", "error", err.Error(), "port", port)
		os.Exit(1)
	}
}
