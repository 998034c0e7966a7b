package rotate

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
	scramIterations = 4096
	scramSaltLen    = 16
	// passwordBytes of crypto/rand entropy per password.
	passwordBytes = 32
)

// newPassword returns passwordBytes random bytes in unpadded base64url: 43
// ASCII characters with nothing to quote in a DSN, and on which SASLprep
// (RFC 4013), which PostgreSQL applies before hashing, is the identity.
func newPassword() (string, error) {
	b := make([]byte, passwordBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// scramVerifier returns the SCRAM-SHA-256 verifier of password with a fresh
// random salt, in the form PostgreSQL stores in pg_authid.rolpassword and
// accepts in ALTER ROLE ... PASSWORD:
//
//	SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
//
// Sending the verifier instead of the password keeps the password out of
// the server's statement log and pg_stat_activity.
func scramVerifier(password string) (string, error) {
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("random salt: %w", err)
	}
	return scramVerifierWith(password, salt, scramIterations)
}

func scramVerifierWith(password string, salt []byte, iterations int) (string, error) {
	k, err := scramKeysFor(password, salt, iterations)
	if err != nil {
		return "", err
	}
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(k.stored), b64(k.server)), nil
}

// scramKeys are the RFC 5802 keys derived from a password.
type scramKeys struct {
	client, stored, server []byte
}

// scramKeysFor derives the keys as RFC 5802 §3 and RFC 7677 define them:
//
//	SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, i)
//	ClientKey      = HMAC(SaltedPassword, "Client Key")
//	StoredKey      = SHA-256(ClientKey)
//	ServerKey      = HMAC(SaltedPassword, "Server Key")
func scramKeysFor(password string, salt []byte, iterations int) (scramKeys, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return scramKeys{}, fmt.Errorf("scram: %w", err)
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	client := mac(salted, "Client Key")
	stored := sha256.Sum256(client)
	return scramKeys{client: client, stored: stored[:], server: mac(salted, "Server Key")}, nil
}
