package stack

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"cloud.google.com/go/secretmanager/apiv1/secretmanagerpb"

	"apigee-timescale/deploy/local/standin/secretmanagertest"
	"apigee-timescale/shared/secrets"
)

// SecretManager is the in-process Secret Manager served over gRPC, so
// that child processes reach it through SECRET_MANAGER_ENDPOINT.
type SecretManager struct {
	Server *secretmanagertest.Server
	// Addr is host:port, the value of SECRET_MANAGER_ENDPOINT.
	Addr string
}

// StartSecretManager serves an empty Secret Manager on a loopback port.
func StartSecretManager() (*SecretManager, error) {
	s, addr, err := secretmanagertest.Listen("127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	return &SecretManager{Server: s, Addr: addr}, nil
}

// CreateSecret creates an empty secret projects/project/secrets/id and
// returns its name; functions/rotate fills an empty secret on its first run.
func (s *SecretManager) CreateSecret(ctx context.Context, project, id string) (string, error) {
	sec, err := s.Server.CreateSecret(ctx, &secretmanagerpb.CreateSecretRequest{
		Parent: "projects/" + project, SecretId: id, Secret: &secretmanagerpb.Secret{},
	})
	if err != nil {
		return "", fmt.Errorf("stack: create secret %s: %w", id, err)
	}
	return sec.GetName(), nil
}

// PutCredentials adds creds as a new version of secret (projects/P/secrets/S),
// creating the secret if needed, and returns the version name.
func (s *SecretManager) PutCredentials(secret string, creds secrets.DBCredentials) (string, error) {
	if err := creds.Validate(); err != nil {
		return "", fmt.Errorf("stack: %w", err)
	}
	payload, err := json.Marshal(creds)
	if err != nil {
		return "", fmt.Errorf("stack: encode credentials: %w", err)
	}
	v, err := s.Server.Put(secret, payload)
	if err != nil {
		return "", fmt.Errorf("stack: %w", err)
	}
	return v, nil
}

// PutPrivacyKey adds a new random pseudonym key as a version of secret
// (projects/P/secrets/S), as deploy/gcp creates ingest's
// INGEST_PRIVACY_KEY_SECRET (`openssl rand -base64 48`), and returns the
// version name.
func (s *SecretManager) PutPrivacyKey(secret string) (string, error) {
	key := make([]byte, 48)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("stack: privacy key: %w", err)
	}
	v, err := s.Server.Put(secret, []byte(base64.StdEncoding.EncodeToString(key)))
	if err != nil {
		return "", fmt.Errorf("stack: %w", err)
	}
	return v, nil
}

// Stop stops the server.
func (s *SecretManager) Stop() { s.Server.Stop() }

// Credentials returns the secret payload for a login on the database at
// dsn (host, port, database and sslmode come from dsn).
func Credentials(dsn, user, password string) (secrets.DBCredentials, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return secrets.DBCredentials{}, fmt.Errorf("stack: parse database url: %w", err)
	}
	host, portStr, err := net.SplitHostPort(u.Host)
	if err != nil {
		host, portStr = u.Host, "5432"
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return secrets.DBCredentials{}, fmt.Errorf("stack: port %q: %w", portStr, err)
	}
	sslmode := u.Query().Get("sslmode")
	if sslmode == "" {
		sslmode = "disable"
	}
	return secrets.DBCredentials{
		Username: user, Password: password, Host: host, Port: port,
		Database: strings.TrimPrefix(u.Path, "/"), SSLMode: sslmode,
	}, nil
}
