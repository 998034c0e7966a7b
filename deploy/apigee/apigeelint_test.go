package apigee_test

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// pinnedApigeelint returns the version deploy/local/setup.sh installs (npm,
// outside the repository), read from the script so the pin is written once;
// the test refuses any other, so a result is always the pinned linter's.
func pinnedApigeelint(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "local", "setup.sh"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*apigeelint_version=([0-9.]+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("deploy/local/setup.sh pins no apigeelint_version")
	}
	return string(m[1])
}

// apigeelintPath finds the linter: $APIGEELINT, then setup.sh's install
// folders (root, then the user's cache), then PATH. Without it the test
// skips, except under CI=true, where a missing linter fails (as
// testkit.Tool does for system tools).
func apigeelintPath(t *testing.T) string {
	t.Helper()
	candidates := []string{os.Getenv("APIGEELINT"), "/var/lib/apigee-timescale/apigeelint/node_modules/.bin/apigeelint"}
	if dir, err := os.UserCacheDir(); err == nil {
		candidates = append(candidates, filepath.Join(dir, "apigee-timescale", "apigeelint", "node_modules", ".bin", "apigeelint"))
	}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if _, err := os.Stat(c); err == nil {
			return c
		}
	}
	if p, err := exec.LookPath("apigeelint"); err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("apigeelint is not installed (deploy/local/setup.sh test installs it), and CI=true forbids skipping")
	}
	t.Skip("apigeelint is not installed: run deploy/local/setup.sh test, or set APIGEELINT")
	return ""
}

// lintResult is one file of apigeelint's json.js report.
type lintResult struct {
	FilePath     string `json:"filePath"`
	ErrorCount   int    `json:"errorCount"`
	WarningCount int    `json:"warningCount"`
	Messages     []struct {
		Severity int    `json:"severity"`
		Line     int    `json:"line"`
		Message  string `json:"message"`
		RuleID   string `json:"ruleId"`
	} `json:"messages"`
}

// TestApigeelint lints both shared flows with Apigee's own linter and its
// Apigee X profile: any error fails, warnings are reported.
func TestApigeelint(t *testing.T) {
	bin := apigeelintPath(t)
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", bin, err)
	}
	if want := pinnedApigeelint(t); string(out) != want+"\n" {
		t.Fatalf("%s is version %q, want %s (deploy/local/setup.sh test installs it)", bin, out, want)
	}
	for _, b := range bundles {
		t.Run(b.name, func(t *testing.T) {
			dir, err := filepath.Abs(b.dir)
			if err != nil {
				t.Fatal(err)
			}
			report := filepath.Join(t.TempDir(), "report.json")
			// The report goes to a file: apigeelint exits non-zero when it
			// finds errors, and the file is what tells them apart from a
			// failure to run.
			cmd := exec.Command(bin, "-s", dir, "-f", "json.js", "--profile", "apigeex", "--norc", "-q", "-w", report)
			msg, runErr := cmd.CombinedOutput()
			data, err := os.ReadFile(report)
			if err != nil {
				t.Fatalf("apigeelint wrote no report (%v): %v\n%s", runErr, err, msg)
			}
			var results []lintResult
			if err := json.Unmarshal(data, &results); err != nil {
				t.Fatalf("apigeelint report: %v\n%s", err, data)
			}
			if len(results) == 0 {
				t.Fatal("apigeelint reported on no file")
			}
			errorsFound := 0
			for _, r := range results {
				errorsFound += r.ErrorCount
				for _, m := range r.Messages {
					rel, _ := filepath.Rel(dir, r.FilePath)
					if m.Severity >= 2 {
						t.Errorf("apigeelint error %s %s:%d: %s", m.RuleID, rel, m.Line, m.Message)
					} else {
						t.Logf("apigeelint warning %s %s:%d: %s", m.RuleID, rel, m.Line, m.Message)
					}
				}
			}
			var exit *exec.ExitError
			if runErr != nil && (!errors.As(runErr, &exit) || errorsFound == 0) {
				t.Errorf("apigeelint failed without reporting an error: %v\n%s", runErr, msg)
			}
		})
	}
}
