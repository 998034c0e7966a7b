package function

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"
)

// stopSignals are the signals that drain: SIGTERM is what Cloud Run sends
// (10 s before SIGKILL), an interrupt is ^C in a local run.
var stopSignals = []os.Signal{syscall.SIGTERM, os.Interrupt}

// drains are the Drain calls of every started Lazy. When Main runs, it
// waits for the signal and returns after draining, and the command's main
// exits. Otherwise (the platform's generated main, which never returns) the
// first registration starts a goroutine that waits for the signal, drains,
// and hands the signal back to its default action (afterDrain), which ends
// the process as it would have ended without a handler, only later.
var drains struct {
	sync.Mutex
	fns      []func() error
	byMain   bool
	watching bool
}

// afterDrain ends the process once a drain outside Main is done; a
// variable so that tests can watch it instead.
var afterDrain = func(sig os.Signal) {
	signal.Reset(sig)
	if p, err := os.FindProcess(os.Getpid()); err == nil {
		_ = p.Signal(sig)
	}
}

func onSIGTERM(fn func() error) {
	drains.Lock()
	defer drains.Unlock()
	drains.fns = append(drains.fns, fn)
	if drains.byMain || drains.watching {
		return
	}
	drains.watching = true
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, stopSignals...)
	go func() {
		sig := <-ch
		signal.Stop(ch)
		_ = Shutdown()
		afterDrain(sig)
	}()
}

// Shutdown drains every started Lazy that has a Drain, once each.
func Shutdown() error {
	drains.Lock()
	fns := drains.fns
	drains.fns = nil
	drains.Unlock()
	var errs []error
	for _, fn := range fns {
		errs = append(errs, fn())
	}
	return errors.Join(errs...)
}

// Main serves the function named target at "/" on $PORT (default 8080), as
// the platform's generated main does (FUNCTION_TARGET, when set, chooses
// another), until SIGTERM or an interrupt; then it drains what was started
// and returns. The command's main exits: with status 1 when Main returns
// an error (the server failed, or a drain was incomplete).
func Main(target string) error {
	ctx, stop := signal.NotifyContext(context.Background(), stopSignals...)
	defer stop()
	drains.Lock()
	drains.byMain = true
	drains.Unlock()
	if os.Getenv("FUNCTION_TARGET") == "" {
		if err := os.Setenv("FUNCTION_TARGET", target); err != nil {
			return fmt.Errorf("function: set FUNCTION_TARGET: %w", err)
		}
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	served := make(chan error, 1)
	go func() { served <- funcframework.Start(port) }()
	select {
	case err := <-served:
		return fmt.Errorf("function: serve %s on port %s: %w", target, port, err)
	case <-ctx.Done():
	}
	if err := Shutdown(); err != nil {
		return fmt.Errorf("function: %w", err)
	}
	return nil
}
