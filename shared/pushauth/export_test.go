package pushauth

import "time"

// SetClock makes v's verified-token cache read the time from now (idtoken
// keeps reading the real clock).
func SetClock(v *Verifier, now func() time.Time) { v.now = now }

// VerifiedTokens is how many tokens v remembers.
func VerifiedTokens(v *Verifier) int {
	v.verified.mu.RLock()
	defer v.verified.mu.RUnlock()
	return len(v.verified.tokens)
}

const (
	MaxVerified = maxVerified
	VerifiedFor = verifiedFor
)
