package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"apigee-timescale/deploy/local/standin/pushrelay"
)

// Relay is a pushrelay.Relay running in the background.
type Relay struct {
	*pushrelay.Relay
	cancel context.CancelFunc
	done   chan error
}

// StartRelay creates a relay for cfg and runs it until Stop.
func StartRelay(cfg pushrelay.Config) (*Relay, error) {
	r, err := pushrelay.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rr := &Relay{Relay: r, cancel: cancel, done: make(chan error, 1)}
	go func() { rr.done <- r.Run(ctx) }()
	return rr, nil
}

// Stop stops pulling, lets requests in flight finish and hands held
// messages back to the subscription; it waits at most timeout.
func (r *Relay) Stop(timeout time.Duration) error {
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- nil // a second Stop returns at once
		return err
	case <-time.After(timeout):
		return errors.New("stack: relay did not stop in time")
	}
}

// Attempt is one delivery attempt as the relay saw it.
type Attempt struct {
	Start time.Time
	Took  time.Duration
	// Status is the HTTP status, 0 when the request failed (refused,
	// reset, timed out).
	Status int
	Err    string
}

// Acked reports whether the attempt acknowledged the message.
func (a Attempt) Acked() bool {
	switch a.Status {
	case http.StatusProcessing, http.StatusOK, http.StatusCreated, http.StatusAccepted, http.StatusNoContent:
		return true
	}
	return false
}

// Recorder is an http.RoundTripper that records every delivery attempt
// by Pub/Sub message ID: what was acknowledged, when, and how each
// attempt ended. Give its Client to pushrelay.Config.HTTPClient.
type Recorder struct {
	next http.RoundTripper

	mu       sync.Mutex
	attempts map[string][]Attempt
	statuses map[int]int64
}

// NewRecorder wraps next (nil: a clone of http.DefaultTransport with
// enough idle connections for a relay).
func NewRecorder(next http.RoundTripper) *Recorder {
	if next == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Keep a connection per request in flight: with the default total
		// of 100 idle connections, a relay with more in flight closes
		// connections just handed back, and a request racing onto one
		// fails ("putIdleConn: too many idle connections").
		t.MaxIdleConns = 0
		t.MaxIdleConnsPerHost = 1000
		next = t
	}
	return &Recorder{next: next, attempts: map[string][]Attempt{}, statuses: map[int]int64{}}
}

// Client returns a client over the recorder that, like Pub/Sub push, does
// not follow redirects.
func (r *Recorder) Client() *http.Client {
	return &http.Client{
		Transport:     r,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// RoundTrip implements http.RoundTripper.
func (r *Recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	id := messageID(req)
	a := Attempt{Start: time.Now()}
	resp, err := r.next.RoundTrip(req)
	if err != nil {
		a.Err = err.Error()
	} else {
		a.Status = resp.StatusCode
	}
	a.Took = time.Since(a.Start)
	r.mu.Lock()
	r.attempts[id] = append(r.attempts[id], a)
	r.statuses[a.Status]++
	r.mu.Unlock()
	return resp, err
}

// messageID reads the Pub/Sub message ID of a push request: the metadata
// header of an unwrapped delivery or the envelope's messageId.
func messageID(req *http.Request) string {
	if id := req.Header.Get("X-Goog-Pubsub-Message-Id"); id != "" {
		return id
	}
	if req.GetBody == nil {
		return ""
	}
	body, err := req.GetBody()
	if err != nil {
		return ""
	}
	defer body.Close()
	b, err := io.ReadAll(body)
	if err != nil {
		return ""
	}
	var env struct {
		Message struct {
			MessageID string `json:"messageId"`
		} `json:"message"`
	}
	if json.Unmarshal(b, &env) != nil {
		return ""
	}
	return env.Message.MessageID
}

// Attempts returns the attempts for message id, oldest first.
func (r *Recorder) Attempts(id string) []Attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Attempt(nil), r.attempts[id]...)
}

// All returns every message's attempts.
func (r *Recorder) All() map[string][]Attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]Attempt, len(r.attempts))
	for k, v := range r.attempts {
		out[k] = append([]Attempt(nil), v...)
	}
	return out
}

// Acked returns, per message ID, when its first acknowledged attempt
// ended.
func (r *Recorder) Acked() map[string]time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]time.Time{}
	for id, as := range r.attempts {
		for _, a := range as {
			if a.Acked() {
				out[id] = a.Start.Add(a.Took)
				break
			}
		}
	}
	return out
}

// Statuses counts attempts by HTTP status (0: the request failed).
func (r *Recorder) Statuses() map[int]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[int]int64, len(r.statuses))
	for k, v := range r.statuses {
		out[k] = v
	}
	return out
}

// Failed counts attempts that did not acknowledge.
func (r *Recorder) Failed() int64 {
	var n int64
	for status, c := range r.Statuses() {
		if !(Attempt{Status: status}).Acked() {
			n += c
		}
	}
	return n
}
