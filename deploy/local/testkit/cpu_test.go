package testkit

import (
	"os"
	"syscall"
	"testing"
	"time"
)

func selfCPU(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

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
	// Spin until the kernel's other account of this process's CPU time
	// (getrusage) has grown by 100 ms, however busy the machine is: wall
	// time would measure the load, not this process.
	start, deadline := selfCPU(t), time.Now().Add(30*time.Second)
	for selfCPU(t)-start < 100*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatal("100 ms of CPU not had in 30 s")
		}
	}
	after, _ := BackendCPU(os.Getpid())
	// /proc counts in 10 ms ticks, and other goroutines run too.
	if after-before < 80*time.Millisecond {
		t.Fatalf("CPU time grew by %v over 100 ms of CPU spent spinning", after-before)
	}
	if _, ok := BackendCPU(-1); ok {
		t.Fatal("pid -1 reported as visible")
	}
}
