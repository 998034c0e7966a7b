// Package pubsubtest runs Pub/Sub in process for tests and the local stack:
// the pstest fake server with the real client connected to it over gRPC,
// so code under test talks to Pub/Sub exactly as it does in production.
package pubsubtest

import (
	"context"
	"fmt"
	"testing"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Fake is a pstest server and a client of project connected to it.
type Fake struct {
	Server  *pstest.Server
	Client  *pubsub.Client
	Project string
	conn    *grpc.ClientConn
}

// Start starts the server (with reactors, e.g. to make Publish fail) and
// connects a client. Close releases both.
func Start(ctx context.Context, project string, opts ...pstest.ServerReactorOption) (*Fake, error) {
	srv := pstest.NewServer(opts...)
	conn, err := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		_ = srv.Close()
		return nil, fmt.Errorf("pubsubtest: connection: %w", err)
	}
	client, err := pubsub.NewClient(ctx, project, option.WithGRPCConn(conn))
	if err != nil {
		_ = conn.Close()
		_ = srv.Close()
		return nil, fmt.Errorf("pubsubtest: client: %w", err)
	}
	return &Fake{Server: srv, Client: client, Project: project, conn: conn}, nil
}

// New is Start for a test: it fails the test on error and closes the fake
// when the test ends.
func New(tb testing.TB, project string, opts ...pstest.ServerReactorOption) *Fake {
	tb.Helper()
	f, err := Start(context.Background(), project, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(f.Close)
	return f
}

// ClientOptions connect another client (one the code under test makes
// itself) to the same server.
func (f *Fake) ClientOptions() []option.ClientOption {
	return []option.ClientOption{option.WithGRPCConn(f.conn)}
}

// Addr is the server's address, the value of PUBSUB_EMULATOR_HOST for a
// separate process.
func (f *Fake) Addr() string { return f.Server.Addr }

// Close closes the client, the connection and the server.
func (f *Fake) Close() {
	_ = f.Client.Close()
	_ = f.conn.Close()
	_ = f.Server.Close()
}
