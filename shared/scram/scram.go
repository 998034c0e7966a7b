// Package scram makes PostgreSQL SCRAM-SHA-256 password verifiers on the
// client, so that a new password is sent to the server only as its
// verifier (ALTER ROLE … PASSWORD 'SCRAM-SHA-256$…') and never reaches the
// statement log or pg_stat_activity. functions/rotate and the deploy's
// dblogin use it.
package scram

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
)

// PostgreSQL's defaults for verifiers it computes itself (scram_iterations,
// SCRAM_DEFAULT_SALT_LEN).
const (
	Iterations = 4096
	saltLen    = 16
	// PasswordBytes of crypto/rand entropy per password.
	PasswordBytes = 32
)

// NewPassword returns PasswordBytes random bytes in unpadded base64url: 43
// ASCII characters with nothing to quote in a DSN, and on which SASLprep
// (RFC 4013), which PostgreSQL applies before hashing, is the identity.
func NewPassword() (string, error) {
	b := make([]byte, PasswordBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("scram: random password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Verifier returns the SCRAM-SHA-256 verifier of password with a fresh
// random salt, in the form PostgreSQL stores in pg_authid.rolpassword and
// accepts in ALTER ROLE ... PASSWORD:
//
//	SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
//
// Sending the verifier instead of the password keeps the password out of
// the server's statement log and pg_stat_activity.
func Verifier(password string) (string, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("scram: random salt: %w", err)
	}
	return VerifierWith(password, salt, Iterations)
}

// VerifierWith is Verifier with a given salt and iteration count.
func VerifierWith(password string, salt []byte, iterations int) (string, error) {
	k, err := keysFor(password, salt, iterations)
	if err != nil {
		return "", err
	}
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(k.stored), b64(k.server)), nil
}

// keys are the RFC 5802 keys derived from a password.
type keys struct {
	client, stored, server []byte
}

// keysFor derives the keys as RFC 5802 §3 and RFC 7677 define them:
//
//	SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, i)
//	ClientKey      = HMAC(SaltedPassword, "Client Key")
//	StoredKey      = SHA-256(ClientKey)
//	ServerKey      = HMAC(SaltedPassword, "Server Key")
func keysFor(password string, salt []byte, iterations int) (keys, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return keys{}, fmt.Errorf("scram: %w", err)
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	client := mac(salted, "Client Key")
	stored := sha256.Sum256(client)
	return keys{client: client, stored: stored[:], server: mac(salted, "Server Key")}, nil
}
