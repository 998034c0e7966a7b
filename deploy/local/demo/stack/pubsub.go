// Package stack assembles the local stack that `make demo` and the
// reliability suite run: Pub/Sub (pstest, in process, reached through the
// real client), Secret Manager (the in-process fake as a gRPC server), a
// fresh migrated database with its logins, the functions (built and run as
// child processes, or served in process), push relays with an acknowledgement
// recorder, and a local OIDC signer for push authentication.
//
// Library code: it returns errors and never logs; callers decide.
package stack

import (
	"context"
	"fmt"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
)

// PubSub is an in-process Pub/Sub server and a real client connected to it.
type PubSub struct {
	Server  *pstest.Server
	Client  *pubsub.Client
	Project string
	conn    *grpc.ClientConn
}

// StartPubSub starts pstest and connects a client for project.
func StartPubSub(ctx context.Context, project string) (*PubSub, error) {
	srv := pstest.NewServer()
	conn, err := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		_ = srv.Close()
		return nil, fmt.Errorf("stack: pubsub connection: %w", err)
	}
	client, err := pubsub.NewClient(ctx, project, option.WithGRPCConn(conn))
	if err != nil {
		_ = conn.Close()
		_ = srv.Close()
		return nil, fmt.Errorf("stack: pubsub client: %w", err)
	}
	return &PubSub{Server: srv, Client: client, Project: project, conn: conn}, nil
}

// Addr is the server's address, the value of PUBSUB_EMULATOR_HOST for a
// separate process.
func (p *PubSub) Addr() string { return p.Server.Addr }

// Topic creates a topic and returns its full name.
func (p *PubSub) Topic(ctx context.Context, id string) (string, error) {
	name := "projects/" + p.Project + "/topics/" + id
	if _, err := p.Client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: name}); err != nil {
		return "", fmt.Errorf("stack: create topic %s: %w", id, err)
	}
	return name, nil
}

// Subscription creates a subscription to topic (full name) and returns its
// full name. The relay keeps its messages leased itself; the deadline only
// matters if the relay dies.
func (p *PubSub) Subscription(ctx context.Context, id, topic string) (string, error) {
	name := "projects/" + p.Project + "/subscriptions/" + id
	_, err := p.Client.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name:                     name,
		Topic:                    topic,
		AckDeadlineSeconds:       30,
		MessageRetentionDuration: durationpb.New(24 * time.Hour),
	})
	if err != nil {
		return "", fmt.Errorf("stack: create subscription %s: %w", id, err)
	}
	return name, nil
}

// Close closes the client and the server.
func (p *PubSub) Close() {
	_ = p.Client.Close()
	_ = p.conn.Close()
	_ = p.Server.Close()
}
