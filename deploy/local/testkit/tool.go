package testkit

import (
	"os"
	"os/exec"
	"testing"
)

// Tool returns the path of a command a test needs. A missing tool skips the
// test on a developer's machine, naming the package that brings it, and
// fails it under CI=true: CI must never pass by skipping. `make test`
// installs every such tool (deploy/local/setup.sh).
func Tool(tb testing.TB, name, debianPackage string) string {
	tb.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		tb.Fatalf("testkit: %s is not installed (apt-get install %s), and CI=true forbids skipping", name, debianPackage)
	}
	tb.Skipf("testkit: %s is not installed (apt-get install %s, or run `make test`, which installs it)", name, debianPackage)
	return ""
}
