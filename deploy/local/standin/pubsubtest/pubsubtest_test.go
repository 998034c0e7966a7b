package pubsubtest_test

import (
	"context"
	"testing"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	"apigee-timescale/deploy/local/standin/pubsubtest"
)

// A message published through a second client made from ClientOptions
// reaches the fake server.
func TestPublishThroughASecondClient(t *testing.T) {
	ctx := context.Background()
	f := pubsubtest.New(t, "p")
	if _, err := f.Client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: "projects/p/topics/t"}); err != nil {
		t.Fatal(err)
	}
	c, err := pubsub.NewClient(ctx, "p", f.ClientOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pub := c.Publisher("t")
	defer pub.Stop()
	if _, err := pub.Publish(ctx, &pubsub.Message{Data: []byte("hello")}).Get(ctx); err != nil {
		t.Fatal(err)
	}
	if ms := f.Server.Messages(); len(ms) != 1 || string(ms[0].Data) != "hello" {
		t.Fatalf("server holds %d messages, want the one published", len(ms))
	}
}
