package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"apigee-timescale/functions/ingest"
)

// HTTPServer serves a handler on a loopback port in this process.
type HTTPServer struct {
	// URL is http://127.0.0.1:port/.
	URL string
	srv *http.Server
}

// Serve serves h on addr ("127.0.0.1:0" for any free port).
func Serve(h http.Handler, addr string) (*HTTPServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("stack: listen: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return &HTTPServer{URL: "http://" + ln.Addr().String() + "/", srv: srv}, nil
}

// Close stops accepting and waits (within ctx) for requests in flight.
func (s *HTTPServer) Close(ctx context.Context) error {
	if err := s.srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("stack: shutdown: %w", err)
	}
	return nil
}

// Ingest is the ingest function's Service served in process.
type Ingest struct {
	*HTTPServer
	Service *ingest.Service
}

// ServeIngest builds an ingest Service from cfg and deps and serves it on
// addr. In process, the test or demo can hand it collaborators a child
// process cannot take from its environment (a verifier that fetches keys
// from a local signer).
func ServeIngest(cfg ingest.Config, deps ingest.Deps, addr string) (*Ingest, error) {
	svc, err := ingest.NewService(cfg, deps)
	if err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	srv, err := Serve(svc, addr)
	if err != nil {
		_ = svc.Close(context.Background())
		return nil, err
	}
	return &Ingest{HTTPServer: srv, Service: svc}, nil
}

// Close drains the Service as SIGTERM would (commit what is queued,
// answer what is in flight), then stops the server.
func (i *Ingest) Close(ctx context.Context) error {
	return errors.Join(i.Service.Shutdown(ctx), i.HTTPServer.Close(ctx))
}
