package stack

import (
	"fmt"

	"apigee-timescale/deploy/local/standin/pushauthtest"
)

// Signer is a local stand-in for Google's ID token signing: the push relay
// mints tokens with it (TokenSource) and ingest's verifier fetches its key
// set through HTTPClient, so push authentication runs unchanged without
// network.
type Signer = pushauthtest.Signer

// NewSigner makes a signer with a fresh key.
func NewSigner() (*Signer, error) {
	s, err := pushauthtest.New()
	if err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	return s, nil
}
