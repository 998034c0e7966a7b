package gcp_test

import (
	"bytes"
	"fmt"
	"go/parser"
	"go/token"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"apigee-timescale/deploy/local/stack"
)

// The Cloud Run functions Go buildpack (GoogleCloudPlatform/buildpacks,
// cmd/go/functions_framework/lib/lib.go at 21f28de8, read for this test)
// turns the uploaded source into an application in these steps, which
// TestStagedFunctionsBuildLikeTheBuildpack repeats on what stage.sh produces:
//
//  1. It parses the .go files at the source root (imports only,
//     converter/get_package/main.go) and requires exactly one package.
//  2. `go list -m` in the source gives the module path, whose first element
//     must contain a dot; the function package is that module path (unless
//     a directory named like the package sits at the application root).
//  3. If the root package imports
//     github.com/GoogleCloudPlatform/functions-framework-go/functions, it
//     uses the declarative main template: a main package at
//     functions.local/app/main.go that blank-imports the function package
//     and calls funcframework.Start(PORT), which serves FUNCTION_TARGET at /.
//  4. It runs `go mod tidy` in the source, then `go build -o BIN <abs path
//     of functions.local/app>` there.
const (
	frameworkFunctions = "github.com/GoogleCloudPlatform/functions-framework-go/functions"
	appDir             = "functions.local/app"
)

// generatedMain is what the declarative template produces for a function
// package, written here from the steps above.
func generatedMain(pkg string) string {
	return fmt.Sprintf(`package main

import (
	"log"
	"net/http"
	"os"

	_ %q

	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"
)

func main() {
	http.HandleFunc("/robots.txt", http.NotFound)
	http.HandleFunc("/favicon.ico", http.NotFound)
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if err := funcframework.Start(port); err != nil {
		log.Fatalf("Function failed to start: %%v\n", err)
	}
}
`, pkg)
}

func TestStagedFunctionsBuildLikeTheBuildpack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds three binaries; skipped with -short")
	}
	fns := []struct{ pkg, target string }{
		{"./functions/ingest", "Ingest"},
		{"./functions/rollup", "Rollup"},
		{"./functions/rotate", "Rotate"},
		{"./functions/readers", "SyncReaders"},
	}
	for _, fn := range fns {
		t.Run(fn.target, func(t *testing.T) {
			t.Parallel()
			src := filepath.Join(t.TempDir(), "source")
			if out, err := exec.Command("./stage.sh", fn.pkg, src).CombinedOutput(); err != nil {
				t.Fatalf("stage.sh: %v\n%s", err, out)
			}

			// 1. One package at the root.
			name, imports := rootPackage(t, src)

			// 2. The module path, with a dot in its first element.
			mod := strings.TrimSpace(goCmd(t, src, offline, "list", "-m"))
			if first, _, _ := strings.Cut(mod, "/"); !strings.Contains(first, ".") {
				t.Fatalf("module path %q: the buildpack requires a dot in the first element", mod)
			}
			if _, err := os.Stat(filepath.Join(src, name)); err == nil {
				t.Fatalf("a directory %q at the root would change the package the buildpack imports", name)
			}

			// 3. The declarative template, selected by the framework import.
			if !imports[frameworkFunctions] {
				t.Fatalf("the root package does not import %s: the buildpack would use a template that calls %s.%s directly",
					frameworkFunctions, name, fn.target)
			}
			if !imports["apigee-timescale/"+strings.TrimPrefix(fn.pkg, "./")] {
				t.Fatalf("the root package does not import the function package %s", fn.pkg)
			}
			if err := os.MkdirAll(filepath.Join(src, appDir), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(src, appDir, "main.go"), []byte(generatedMain(mod)), 0o644); err != nil {
				t.Fatal(err)
			}

			// 4. go mod tidy, as the buildpack does, with the module proxy
			// (it may need modules that no build of ours ever downloaded,
			// such as test dependencies of dependencies); then go build of
			// the generated main offline: everything the build needs must be
			// named by the tidied go.mod and go.sum.
			goCmd(t, src, online, "mod", "tidy")
			if mod, err := os.ReadFile(filepath.Join(src, "go.mod")); err != nil || bytes.Contains(mod, []byte("\ntool ")) || bytes.Contains(mod, []byte("honnef.co/go/tools")) {
				t.Errorf("the staged go.mod names developer tools (%v):\n%s", err, mod)
			}
			bin := filepath.Join(t.TempDir(), "server")
			goCmd(t, src, offline, "build", "-o", bin, filepath.Join(src, appDir))

			// The binary serves the target at / and refuses an unknown one.
			probe(t, bin, fn.target)
			out, err := runWithTarget(bin, "NoSuchFunction")
			if err == nil || !strings.Contains(out, "NoSuchFunction") {
				t.Errorf("an unknown FUNCTION_TARGET: err %v, output %q; want a failure naming it", err, out)
			}
		})
	}
}

// rootPackage parses the root's .go files as the buildpack's get_package
// does and returns the single package name and its imports.
func rootPackage(t *testing.T, dir string) (string, map[string]bool) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no .go files at the root of %s (%v)", dir, err)
	}
	name := ""
	imports := map[string]bool{}
	fset := token.NewFileSet()
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		if name != "" && af.Name.Name != name {
			t.Fatalf("several packages at the root: %s and %s", name, af.Name.Name)
		}
		name = af.Name.Name
		for _, im := range af.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			imports[p] = true
		}
	}
	return name, imports
}

// Whether goCmd may reach the module proxy.
const (
	online  = true
	offline = false
)

// goCmd runs the go command in dir; offline, every module must come from
// the module cache.
func goCmd(t *testing.T, dir string, network bool, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off", "GOTOOLCHAIN=local")
	if !network {
		cmd.Env = append(cmd.Env, "GOPROXY=off")
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s in %s: %v\n%s", strings.Join(args, " "), dir, err, stderr.String())
	}
	return string(out)
}

// probe starts bin as Cloud Run would (PORT, FUNCTION_TARGET, K_SERVICE)
// and checks that / reaches the function: any answer but the framework's
// 404. Then that the request left no blank line in the output: with
// K_SERVICE set, functions-framework-go writes one to stdout and one to
// stderr after every request unless shared/function cleared it, two
// system calls a delivery.
func probe(t *testing.T, bin, target string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PORT="+port, "FUNCTION_TARGET="+target, "K_SERVICE=probe")
	logs := new(stack.SyncBuffer)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Post("http://127.0.0.1:"+port+"/", "application/json", strings.NewReader("{}"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNotFound {
				t.Fatalf("%s: POST / answered 404: the function is not served at /\n%s", target, logs.String())
			}
			// The framework's writes follow the handler's return, which
			// may be after the answer is on the wire.
			time.Sleep(200 * time.Millisecond)
			if out := "\n" + logs.String(); strings.Contains(out, "\n\n") {
				t.Errorf("%s: the output after one request has a blank line (the framework's per-request flush):\n%q", target, out[1:])
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the server did not answer: %v\n%s", target, err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runWithTarget runs bin with a FUNCTION_TARGET and returns its output once
// it exits (at most 10 s).
func runWithTarget(bin, target string) (string, error) {
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PORT=0", "FUNCTION_TARGET="+target)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return out.String(), nil
	}
}
