package rollup

import (
	"context"
	"fmt"

	"cloud.google.com/go/pubsub/v2"
	"google.golang.org/api/option"
)

// Message is one alert to publish.
type Message struct {
	Data       []byte
	Attributes map[string]string
}

// Publisher sends alert messages.
type Publisher interface {
	// Publish sends every message and returns one result per message, nil
	// for each the topic accepted.
	Publish(ctx context.Context, msgs []Message) []error
}

// PubSubPublisher publishes alerts to a Pub/Sub topic with the v2 client.
type PubSubPublisher struct {
	client *pubsub.Client
	pub    *pubsub.Publisher
}

// NewPubSubPublisher connects to the alert topic of cfg (ALERT_TOPIC with
// PUBSUB_PROJECT). opts go to pubsub.NewClient (tests point it at pstest);
// PUBSUB_EMULATOR_HOST is honoured by the client itself.
func NewPubSubPublisher(ctx context.Context, cfg Config, opts ...option.ClientOption) (*PubSubPublisher, error) {
	project, topic, err := cfg.topic()
	if err != nil {
		return nil, fmt.Errorf("rollup: alert topic: %w", err)
	}
	client, err := pubsub.NewClient(ctx, project, opts...)
	if err != nil {
		return nil, fmt.Errorf("rollup: pubsub client: %w", err)
	}
	return &PubSubPublisher{client: client, pub: client.Publisher(topic)}, nil
}

// Publish hands every message to the client's batching publisher first and
// then waits for each result, so a run's alerts go out in few requests.
func (p *PubSubPublisher) Publish(ctx context.Context, msgs []Message) []error {
	results := make([]*pubsub.PublishResult, len(msgs))
	for i, m := range msgs {
		results[i] = p.pub.Publish(ctx, &pubsub.Message{Data: m.Data, Attributes: m.Attributes})
	}
	errs := make([]error, len(msgs))
	for i, r := range results {
		if _, err := r.Get(ctx); err != nil {
			errs[i] = fmt.Errorf("rollup: publish alert: %w", err)
		}
	}
	return errs
}

// Close flushes and stops the publisher and closes the client.
func (p *PubSubPublisher) Close() error {
	p.pub.Stop()
	return p.client.Close()
}
