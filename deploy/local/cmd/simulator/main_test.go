package main

import (
	"context"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	"apigee-timescale/deploy/local/simulator"
	"apigee-timescale/deploy/local/stack"
)

// TestRunPublishesToTheEmulator runs the command's publisher against a
// Pub/Sub emulator reached through PUBSUB_EMULATOR_HOST, as a user would.
func TestRunPublishesToTheEmulator(t *testing.T) {
	ctx := context.Background()
	ps, err := stack.StartPubSub(ctx, "proj")
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	if _, err := ps.Client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: "projects/proj/topics/calls"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PUBSUB_EMULATOR_HOST", ps.Addr())
	err = run(ctx, "proj", "calls", "", simulator.Config{Rate: 400, Duration: 600 * time.Millisecond, Span: 10 * time.Minute, Spikes: []simulator.Spike{}})
	if err != nil {
		t.Fatal(err)
	}
	msgs := ps.Server.Messages()
	if len(msgs) < 100 {
		t.Fatalf("%d messages reached the emulator, want about 240", len(msgs))
	}
	for _, m := range msgs {
		if m.Attributes["schema"] == "" && m.Attributes["source"] == "" {
			t.Fatalf("message without the shared flow's attributes: %v", m.Attributes)
		}
	}
}
