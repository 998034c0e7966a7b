package function_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"apigee-timescale/shared/env"
	_ "apigee-timescale/shared/function"
)

// TestKServiceClearedAndKept runs this test binary again with K_SERVICE
// set, as Cloud Run starts a function: by the time tests run, package
// initialisation has cleared the variable (so functions-framework-go does
// not flush after every request) and env.CloudRunService still has it.
func TestKServiceClearedAndKept(t *testing.T) {
	if os.Getenv("FUNCTION_TEST_CHILD") == "1" {
		if got := os.Getenv("K_SERVICE"); got != "" {
			t.Errorf("K_SERVICE = %q after start, want it cleared", got)
		}
		if got := env.CloudRunService(); got != "apigee-ingest" {
			t.Errorf("env.CloudRunService() = %q, want the service's name", got)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestKServiceClearedAndKept$", "-test.v")
	cmd.Env = append(os.Environ(), "FUNCTION_TEST_CHILD=1", "K_SERVICE=apigee-ingest")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestKServiceClearedAndKept") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
