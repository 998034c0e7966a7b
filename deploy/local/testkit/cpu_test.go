package testkit

import (
	"os"
	"testing"
	"time"
)

// This process's own CPU time grows while it spins, and a pid that does not
// exist is reported as not visible.
func TestBackendCPU(t *testing.T) {
	before, ok := BackendCPU(os.Getpid())
	if !ok {
		if os.Getenv("CI") == "true" {
			t.Fatal("no /proc: CI runs on Linux")
		}
		t.Skip("no /proc on this system")
	}
	for start := time.Now(); time.Since(start) < 100*time.Millisecond; {
	}
	after, _ := BackendCPU(os.Getpid())
	if after-before < 50*time.Millisecond {
		t.Fatalf("CPU time grew by %v over 100 ms of spinning", after-before)
	}
	if _, ok := BackendCPU(-1); ok {
		t.Fatal("pid -1 reported as visible")
	}
}
