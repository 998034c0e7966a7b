// Command rollup serves the Rollup function locally or in a container:
// PORT (default 8080) is the listening port, and FUNCTION_TARGET (default
// Rollup) selects the function served at "/". Without a target the
// functions framework would serve it at /Rollup only.
package main

import (
	"os"

	_ "apigee-timescale/functions/rollup"
	"apigee-timescale/shared/function"
	"apigee-timescale/shared/logging"
)

func main() {
	if err := function.Main("Rollup"); err != nil {
		logging.Stdout().Error("rollup: exit", logging.Err(err))
		os.Exit(1)
	}
}
