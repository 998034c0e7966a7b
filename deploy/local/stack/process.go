package stack

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ModuleRoot returns the directory of the go.mod above the working
// directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("stack: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("stack: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Build compiles each main package (an import path or ./relative to the
// module root) into dir, naming the binary after its key in pkgs, and
// returns the binaries' paths by the same keys.
func Build(ctx context.Context, dir string, pkgs map[string]string) (map[string]string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	// Concurrently: most of the time is linking, one process each.
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	out := map[string]string{}
	for name, pkg := range pkgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bin := filepath.Join(dir, name)
			cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
			cmd.Dir = root
			b, err := cmd.CombinedOutput()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("stack: go build %s: %w\n%s", pkg, err, b))
				return
			}
			out[name] = bin
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("stack: free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Process is a function running as a child process on a loopback port, as
// Cloud Run runs one instance of it.
type Process struct {
	Name string
	Port int
	// URL is http://127.0.0.1:Port/.
	URL string

	cmd  *exec.Cmd
	done chan struct{}
	err  error // the exit status, valid once done is closed
}

// StartProcess runs bin with PORT set and env added to this process's
// environment, sends its output to logw (which must be safe for
// concurrent writes; see SyncBuffer) and waits until it accepts TCP
// connections.
func StartProcess(ctx context.Context, name, bin string, port int, env []string, logw io.Writer) (*Process, error) {
	cmd := exec.Command(bin)
	cmd.Env = append(append(os.Environ(), env...), "PORT="+strconv.Itoa(port))
	cmd.Stdout, cmd.Stderr = logw, logw
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("stack: start %s: %w", name, err)
	}
	p := &Process{Name: name, Port: port, URL: fmt.Sprintf("http://127.0.0.1:%d/", port), cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("stack: %s exited before listening: %v", name, p.err)
		case <-ctx.Done():
			_ = p.Kill()
			return nil, fmt.Errorf("stack: %s: %w", name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = p.Kill()
			return nil, fmt.Errorf("stack: %s did not listen on %s within 30s", name, addr)
		}
	}
}

// PID is the process ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitErr is the exit status once Done is closed (nil: exit code 0).
func (p *Process) ExitErr() error {
	<-p.done
	return p.err
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("stack: signal %s: %w", p.Name, err)
	}
	return nil
}

// Stop sends SIGTERM and waits up to grace for the exit, then kills. It
// returns the exit status of a process that exited by itself.
func (p *Process) Stop(grace time.Duration) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(grace):
		_ = p.Kill()
		return fmt.Errorf("stack: %s did not exit within %s of SIGTERM; killed", p.Name, grace)
	}
}

// Kill kills the process and waits for it.
func (p *Process) Kill() error {
	_ = p.cmd.Process.Kill()
	<-p.done
	return nil
}

// RSS returns the process's resident set size in bytes.
func (p *Process) RSS() (int64, error) {
	return RSSOf(p.PID())
}

// RSSOf reads VmRSS of a process from /proc.
func RSSOf(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("stack: rss: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("stack: rss: %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("stack: rss: no VmRSS for pid %d", pid)
}

// SyncBuffer is a bytes.Buffer safe for concurrent use, for process logs.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
