package secretmanagertest

import (
	"context"
	"fmt"
	"testing"

	secretmanager "cloud.google.com/go/secretmanager/apiv1"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// NewClient returns a real Secret Manager client talking plaintext gRPC to
// addr without authentication, as the local stack and tests need.
func NewClient(ctx context.Context, addr string) (*secretmanager.Client, error) {
	c, err := secretmanager.NewClient(ctx,
		option.WithEndpoint(addr),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	)
	if err != nil {
		return nil, fmt.Errorf("secretmanagertest: new client: %w", err)
	}
	return c, nil
}

// Start serves a new Server on 127.0.0.1 and returns it with a real client
// connected to it. Both are closed in tb.Cleanup.
func Start(tb testing.TB) (*Server, *secretmanager.Client) {
	tb.Helper()
	s, addr, err := Listen("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Stop)
	c, err := NewClient(context.Background(), addr)
	if err != nil {
		tb.Fatal(err)
	}
	// Registered after Stop, so it runs before it: close the client first.
	tb.Cleanup(func() { _ = c.Close() })
	return s, c
}
