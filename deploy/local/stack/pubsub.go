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

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/protobuf/types/known/durationpb"

	"apigee-timescale/deploy/local/standin/pubsubtest"
)

// PubSub is an in-process Pub/Sub server and a real client connected to it.
type PubSub struct{ *pubsubtest.Fake }

// StartPubSub starts pstest and connects a client for project.
func StartPubSub(ctx context.Context, project string) (*PubSub, error) {
	f, err := pubsubtest.Start(ctx, project)
	if err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	return &PubSub{f}, nil
}

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
