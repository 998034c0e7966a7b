// Package secrets reads the database credential secret from Secret Manager.
//
// The secret payload is JSON:
//
//	{"username":"…","password":"…","host":"…","port":5432,"database":"…","sslmode":"require"}
//
// Nothing in this package puts the password into an error, a String or a log
// value.
package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"regexp"
	"strconv"

	secretmanager "cloud.google.com/go/secretmanager/apiv1"
	"cloud.google.com/go/secretmanager/apiv1/secretmanagerpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// EndpointEnv names the variable that points clients at a local or test
// Secret Manager (plaintext gRPC, no authentication).
const EndpointEnv = "SECRET_MANAGER_ENDPOINT"

var (
	secretNameRe  = regexp.MustCompile(`^projects/[^/]+/secrets/[a-zA-Z0-9_-]{1,255}$`)
	versionNameRe = regexp.MustCompile(`^projects/[^/]+/secrets/[a-zA-Z0-9_-]{1,255}/versions/[^/]+$`)
	crcTable      = crc32.MakeTable(crc32.Castagnoli)
)

var errBadPort = errors.New(`field "port" must be an integer`)

// sslModes are the libpq sslmode values pgx understands.
var sslModes = map[string]bool{
	"disable": true, "allow": true, "prefer": true, "require": true, "verify-ca": true, "verify-full": true,
}

// DBCredentials is the payload of the database credential secret.
//
// json.Marshal writes the password (that is the storage format); fmt and slog
// do not (String, GoString, LogValue).
type DBCredentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
	// Host may be empty only when connecting through the Cloud SQL connector,
	// which ignores it.
	Host string `json:"host"`
	// Port defaults to 5432 when 0. Read accepts a JSON number or a numeric
	// string.
	Port     int    `json:"port"`
	Database string `json:"database"`
	// SSLMode is a libpq sslmode; empty means "prefer", the libpq default.
	SSLMode string `json:"sslmode"`
}

// UnmarshalJSON accepts "port" as a number or a numeric string, since
// hand-written secrets (and AWS-style rotation templates) use both.
func (c *DBCredentials) UnmarshalJSON(b []byte) error {
	var aux struct {
		Username string          `json:"username"`
		Password string          `json:"password"`
		Host     string          `json:"host"`
		Port     json.RawMessage `json:"port"`
		Database string          `json:"database"`
		SSLMode  string          `json:"sslmode"`
	}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	*c = DBCredentials{Username: aux.Username, Password: aux.Password, Host: aux.Host, Database: aux.Database, SSLMode: aux.SSLMode}
	if len(aux.Port) == 0 || string(aux.Port) == "null" {
		return nil
	}
	raw := aux.Port
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return errBadPort
		}
		raw = []byte(s)
	}
	p, err := strconv.Atoi(string(raw))
	if err != nil {
		return errBadPort
	}
	c.Port = p
	return nil
}

// Validate reports the first missing or malformed field. It never mentions
// the password's value.
func (c DBCredentials) Validate() error {
	switch {
	case c.Username == "":
		return errors.New("secrets: credentials: username is empty")
	case c.Password == "":
		return errors.New("secrets: credentials: password is empty")
	case c.Database == "":
		return errors.New("secrets: credentials: database is empty")
	case c.Port < 0 || c.Port > 65535:
		return fmt.Errorf("secrets: credentials: port %d is out of range", c.Port)
	case c.SSLMode != "" && !sslModes[c.SSLMode]:
		return fmt.Errorf("secrets: credentials: unknown sslmode %q", c.SSLMode)
	}
	return nil
}

// PortOrDefault returns Port, or 5432 when it is unset.
func (c DBCredentials) PortOrDefault() int {
	if c.Port == 0 {
		return 5432
	}
	return c.Port
}

// String describes the credentials with the password redacted.
func (c DBCredentials) String() string {
	pw := "<empty>"
	if c.Password != "" {
		pw = "<redacted>"
	}
	return fmt.Sprintf("user=%s password=%s host=%s port=%d database=%s sslmode=%s",
		c.Username, pw, c.Host, c.PortOrDefault(), c.Database, c.SSLMode)
}

// GoString keeps %#v from printing the password.
func (c DBCredentials) GoString() string { return "secrets.DBCredentials{" + c.String() + "}" }

// LogValue implements slog.LogValuer without the password.
func (c DBCredentials) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("username", c.Username),
		slog.String("host", c.Host),
		slog.Int("port", c.PortOrDefault()),
		slog.String("database", c.Database),
		slog.String("sslmode", c.SSLMode),
		slog.Bool("password_set", c.Password != ""),
	)
}

// Parse decodes and validates a secret payload. Decoding errors carry the
// position or field, never the payload text.
func Parse(payload []byte) (DBCredentials, error) {
	var c DBCredentials
	if err := json.Unmarshal(payload, &c); err != nil {
		return DBCredentials{}, fmt.Errorf("secrets: decode credentials: %s", describeJSONError(err))
	}
	if err := c.Validate(); err != nil {
		return DBCredentials{}, err
	}
	return c, nil
}

// describeJSONError keeps only structural information: encoding/json messages
// can quote bytes of the input, which may be password characters.
func describeJSONError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("invalid JSON at byte offset %d", syn.Offset)
	case errors.As(err, &typ):
		return fmt.Sprintf("field %q must be %s, not %s", typ.Field, typ.Type, typ.Value)
	case errors.Is(err, errBadPort):
		return err.Error()
	default:
		return "invalid JSON"
	}
}

// ValidSecretName reports whether name is a secret (projects/P/secrets/S) or
// secret version (…/versions/V) resource name.
func ValidSecretName(name string) bool {
	return secretNameRe.MatchString(name) || versionNameRe.MatchString(name)
}

// Read accesses the secret name and decodes its credentials. name is a secret
// resource name projects/P/secrets/S, read at versions/latest, or a full
// version name to pin one version. It returns the resolved version name
// (…/versions/N), which tells callers whether a re-read found something new.
func Read(ctx context.Context, c *secretmanager.Client, name string) (DBCredentials, string, error) {
	data, version, err := Access(ctx, c, name)
	if err != nil {
		return DBCredentials{}, "", err
	}
	creds, err := Parse(data)
	if err != nil {
		return DBCredentials{}, "", fmt.Errorf("%w (in %s)", err, version)
	}
	return creds, version, nil
}

// Access returns the payload of the secret name (as Read takes it), its
// CRC32C checked, and the resolved version name. Errors never quote the
// payload.
func Access(ctx context.Context, c *secretmanager.Client, name string) ([]byte, string, error) {
	var versionName string
	switch {
	case secretNameRe.MatchString(name):
		versionName = name + "/versions/latest"
	case versionNameRe.MatchString(name):
		versionName = name
	default:
		return nil, "", fmt.Errorf("secrets: invalid secret name %q, want projects/P/secrets/S", name)
	}
	resp, err := c.AccessSecretVersion(ctx, &secretmanagerpb.AccessSecretVersionRequest{Name: versionName})
	if err != nil {
		return nil, "", fmt.Errorf("secrets: access %s: %w", versionName, err)
	}
	data := resp.GetPayload().GetData()
	if sum := resp.GetPayload().DataCrc32C; sum != nil && uint32(*sum) != crc32.Checksum(data, crcTable) {
		return nil, "", fmt.Errorf("secrets: access %s: payload does not match its CRC32C", resp.GetName())
	}
	return data, resp.GetName(), nil
}

// NewClient returns a Secret Manager client. An empty endpoint means
// production with Application Default Credentials; otherwise the client
// speaks plaintext gRPC without authentication to endpoint (host:port), the
// value of SECRET_MANAGER_ENDPOINT for the local stack and tests.
func NewClient(ctx context.Context, endpoint string) (*secretmanager.Client, error) {
	var opts []option.ClientOption
	if endpoint != "" {
		opts = append(opts,
			option.WithEndpoint(endpoint),
			option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
		)
	}
	c, err := secretmanager.NewClient(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("secrets: new secret manager client: %w", err)
	}
	return c, nil
}
