// Package functions_test holds the checks that keep the product apart from
// its stand-ins. The product is what is deployed: the three functions and
// the commands run at deploy time, and everything they import. The local
// stack (deploy/local: stand-ins for Google's services, test kits, demo,
// simulator, benchmarks, reliability suite) must never be linked into it,
// and neither may the testing package.
package functions_test

import (
	"os/exec"
	"path"
	"strings"
	"testing"
)

const module = "apigee-timescale"

// product lists the deployed packages; each is checked with all it imports.
var product = []string{
	"./functions/ingest", "./functions/rollup", "./functions/rotate", "./functions/readers",
	"./functions/ingest/cmd/ingest", "./functions/rollup/cmd/rollup", "./functions/rotate/cmd/rotate", "./functions/readers/cmd/readers",
	"./functions/ingest/cmd/pseudonym", "./functions/rollup/cmd/verify",
	"./migrations/cmd/migrate", "./deploy/gcp/cmd/dblogin",
}

// forbidden says why a dependency may not be part of the product, or "".
func forbidden(dep string) string {
	switch {
	case dep == "testing" || strings.HasPrefix(dep, "testing/"):
		return "the testing package"
	case strings.HasPrefix(dep, module+"/deploy/local"):
		return "the local stack (stand-ins, test kits, demo, benchmarks)"
	case strings.HasSuffix(dep, "/pstest"):
		return "the Pub/Sub emulator"
	case strings.HasSuffix(dep, "test") && strings.HasPrefix(dep, module+"/"):
		return "a test helper package"
	}
	return ""
}

func TestProductLinksNoStandIn(t *testing.T) {
	for _, pkg := range product {
		t.Run(strings.TrimPrefix(pkg, "./"), func(t *testing.T) {
			deps := goList(t, "-deps", pkg)
			if len(deps) < 10 {
				t.Fatalf("go list -deps %s listed %d packages; the check would prove nothing", pkg, len(deps))
			}
			for _, d := range deps {
				if why := forbidden(d); why != "" {
					t.Errorf("%s links %s: %s", pkg, d, why)
				}
			}
		})
	}
}

// TestForbiddenCatchesStandIns keeps the rule honest: it must reject what
// the local stack is made of.
func TestForbiddenCatchesStandIns(t *testing.T) {
	for _, dep := range []string{
		"testing", module + "/deploy/local/testkit", module + "/deploy/local/standin/pushrelay",
		"cloud.google.com/go/pubsub/v2/pstest",
	} {
		if forbidden(dep) == "" {
			t.Errorf("forbidden(%q) = \"\"; want a reason", dep)
		}
	}
	for _, dep := range []string{module + "/shared/record", "net/http", "github.com/jackc/pgx/v5"} {
		if why := forbidden(dep); why != "" {
			t.Errorf("forbidden(%q) = %q; want allowed", dep, why)
		}
	}
}

// TestCommandsLiveInCmdFolders: every main package sits in cmd/NAME, so
// `go build` names its binary NAME and no command hides inside another.
func TestCommandsLiveInCmdFolders(t *testing.T) {
	lines := goList(t, "-f", "{{.Name}} {{.ImportPath}}", "./...")
	mains := 0
	for _, l := range lines {
		name, imp, _ := strings.Cut(l, " ")
		if name != "main" {
			continue
		}
		mains++
		if path.Base(path.Dir(imp)) != "cmd" {
			t.Errorf("command %s is not in a cmd/NAME folder", imp)
		}
	}
	if mains < 5 {
		t.Fatalf("found %d commands; want the project's (at least 5)", mains)
	}
}

func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}
