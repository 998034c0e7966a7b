package simulator

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"apigee-timescale/deploy/local/standin/apigee"
	"apigee-timescale/shared/record"
)

// MalformedKind is a kind of bad message that reaches the topic in real
// life. Each maps to the reject reason ingest must quarantine it with.
type MalformedKind int

const (
	// Truncated is a record cut short, as by a shipper's buffer limit: not_json.
	Truncated MalformedKind = iota + 1
	// FutureSchema is a record from a newer shared flow (apigee.call.v2)
	// that this ingest does not know yet: unknown_schema.
	FutureSchema
	// NoMessageID is a record whose messageid variable did not resolve (the
	// flow ran outside a proxy's message flow): missing_field message_id.
	NoMessageID
	// BadContentLength is a call whose client sent "Content-Length: 12, 12",
	// which the template copies verbatim: invalid_field request_size.
	BadContentLength
	// WrongTopic is another system's event published to the calls topic:
	// missing_field schema.
	WrongTopic
)

// MalformedKinds lists every kind, in a stable order.
var MalformedKinds = []MalformedKind{Truncated, FutureSchema, NoMessageID, BadContentLength, WrongTopic}

// Expect returns the reject reason and field ingest must record for k.
func (k MalformedKind) Expect() (reason, field string) {
	switch k {
	case Truncated:
		return record.ReasonNotJSON, ""
	case FutureSchema:
		return record.ReasonUnknownSchema, "schema"
	case NoMessageID:
		return record.ReasonMissingField, "message_id"
	case BadContentLength:
		return record.ReasonInvalidField, "request_size"
	case WrongTopic:
		return record.ReasonMissingField, "schema"
	}
	return "", ""
}

func (k MalformedKind) String() string {
	switch k {
	case Truncated:
		return "truncated"
	case FutureSchema:
		return "future_schema"
	case NoMessageID:
		return "no_message_id"
	case BadContentLength:
		return "bad_content_length"
	case WrongTopic:
		return "wrong_topic"
	}
	return fmt.Sprintf("MalformedKind(%d)", int(k))
}

// Message is one Pub/Sub message as the shared flow (or a misbehaving
// producer) would publish it.
type Message struct {
	Data       []byte
	Attributes map[string]string
	// Call is the ground truth of a good record; nil for malformed ones.
	Call *Call
	// Malformed is the kind of a bad message; 0 for a good one.
	Malformed MalformedKind
}

// Generator renders simulated API calls into messages exactly as the
// Apigee shared flow would: the flow variables of a call go through
// apigee.RenderRecord (the bundle's JavaScript twin and AssignMessage
// chain) and the PublishMessage policy's attribute templates. It is not
// safe for concurrent use.
type Generator struct {
	m       *model
	build   *apigee.AssignMessage
	publish *apigee.PublishMessage
}

// GeneratorConfig configures a Generator.
type GeneratorConfig struct {
	// Seed makes the traffic reproducible; default 1.
	Seed uint64
	// RunID goes into every message_id so runs never collide; default "sim".
	RunID string
	// Spikes alter the calls of a proxy in a time window.
	Spikes []Spike
	// BundleDir is the shared flow bundle; default
	// deploy/apigee/sharedflowbundle of the module containing the working
	// directory.
	BundleDir string
}

// NewGenerator loads the bundle and returns a Generator.
func NewGenerator(cfg GeneratorConfig) (*Generator, error) {
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	if cfg.RunID == "" {
		cfg.RunID = "sim"
	}
	if cfg.BundleDir == "" {
		dir, err := FindBundle()
		if err != nil {
			return nil, err
		}
		cfg.BundleDir = dir
	}
	am, err := apigee.LoadAssignMessage(cfg.BundleDir, apigee.BuildPolicy)
	if err != nil {
		return nil, fmt.Errorf("simulator: %w", err)
	}
	pm, err := apigee.LoadPublishMessage(cfg.BundleDir, apigee.PublishPolicy)
	if err != nil {
		return nil, fmt.Errorf("simulator: %w", err)
	}
	for _, s := range cfg.Spikes {
		if s.Metric != MetricErrorRate && s.Metric != MetricLatency {
			return nil, fmt.Errorf("simulator: spike metric %q is neither %s nor %s", s.Metric, MetricErrorRate, MetricLatency)
		}
	}
	return &Generator{m: newModel(cfg.Seed, cfg.RunID, cfg.Spikes), build: am, publish: pm}, nil
}

// FindBundle returns deploy/apigee/sharedflowbundle of the module that
// contains the working directory.
func FindBundle() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("simulator: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			b := filepath.Join(dir, "deploy", "apigee", "sharedflowbundle")
			if _, err := os.Stat(b); err != nil {
				return "", fmt.Errorf("simulator: no shared flow bundle at %s: %w", b, err)
			}
			return b, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("simulator: no go.mod above the working directory; set the bundle directory")
		}
		dir = parent
	}
}

// Proxies lists every proxy the generator can produce calls for.
func (g *Generator) Proxies() []Proxy { return g.m.proxies() }

// Call renders one good API call at event time at.
func (g *Generator) Call(at time.Time) (Message, error) {
	vars, truth := g.m.call(at)
	msg, err := g.render(vars)
	if err != nil {
		return Message{}, err
	}
	msg.Call = &truth
	return msg, nil
}

// Malformed renders one bad message of kind k around a call at event time at.
func (g *Generator) Malformed(at time.Time, k MalformedKind) (Message, error) {
	vars, _ := g.m.call(at)
	var msg Message
	var err error
	switch k {
	case Truncated:
		if msg, err = g.render(vars); err == nil {
			msg.Data = msg.Data[:len(msg.Data)*3/5]
		}
	case FutureSchema:
		if msg, err = g.render(vars); err == nil {
			msg.Data = bytes.Replace(msg.Data, []byte(`"schema":"apigee.call.v1"`), []byte(`"schema":"apigee.call.v2"`), 1)
			msg.Attributes["schema"] = "apigee.call.v2"
		}
	case NoMessageID:
		delete(vars, "messageid")
		msg, err = g.render(vars)
	case BadContentLength:
		vars["request.header.Content-Length"] = "12, 12"
		msg, err = g.render(vars)
	case WrongTopic:
		msg = Message{
			Data: fmt.Appendf(nil, `{"event":"deployment.complete","apiproxy":%q,"revision":%q,"environment":%q}`,
				vars["apiproxy.name"], vars["apiproxy.revision"], vars["environment.name"]),
			Attributes: map[string]string{"source": "ci-pipeline"},
		}
	default:
		return Message{}, fmt.Errorf("simulator: unknown malformed kind %d", int(k))
	}
	if err != nil {
		return Message{}, err
	}
	msg.Malformed = k
	return msg, nil
}

// render is apigee.RenderRecord with the build policy parsed once rather
// than per call (a test checks both give the same bytes): the JavaScript
// step's twin, then the AssignVariable chain.
func (g *Generator) render(vars map[string]string) (Message, error) {
	scope := make(map[string]string, len(vars)+8)
	for k, v := range vars {
		scope[k] = v
	}
	for k, v := range apigee.DeriveVars(vars) {
		scope[k] = v
	}
	if err := g.build.Apply(scope); err != nil {
		return Message{}, fmt.Errorf("simulator: render record: %w", err)
	}
	rec, ok := scope[apigee.RecordVariable]
	if !ok {
		return Message{}, errors.New("simulator: render record: the build policy did not set " + apigee.RecordVariable)
	}
	data := []byte(rec)
	attrs, err := g.publish.RenderAttributes(vars)
	if err != nil {
		return Message{}, fmt.Errorf("simulator: render attributes: %w", err)
	}
	return Message{Data: data, Attributes: attrs}, nil
}
