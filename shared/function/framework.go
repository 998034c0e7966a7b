package function

import (
	"os"

	"apigee-timescale/shared/env"
)

// The functions are served by functions-framework-go (the platform's
// generated main, or Main), which wraps every HTTP function so that, while
// K_SERVICE is set, it writes a newline to stdout and another to stderr
// after each request: a flush for log lines written without their final
// newline, kept on purpose upstream
// (GoogleCloudPlatform/functions-framework-go#157). Cloud Run sets
// K_SERVICE in every container
// (https://cloud.google.com/run/docs/container-contract#env-vars), and the
// framework reads it for nothing else. Every line these functions write
// ends with its newline (log/slog's JSON handler), so the flush only costs
// two write system calls and a blank log line per delivery (a few µs of
// ingest's 45 to 60; the README's "What session 12 changed" has the
// command and the spread). Clearing the
// variable at start is the framework's one switch for it. What else reads
// it gets the value from env.CloudRunService, kept before the clearing:
// our default application_name, and cloudsqlconn's compute-platform
// metric label, which dbconn and rotate then set explicitly.
func init() {
	if env.CloudRunService() != "" {
		_ = os.Unsetenv(platformFlushSwitch)
	}
}

// platformFlushSwitch is the variable functions-framework-go's per-request
// flush depends on.
const platformFlushSwitch = "K_SERVICE"
