package secrets_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"cloud.google.com/go/secretmanager/apiv1/secretmanagerpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"apigee-timescale/deploy/local/standin/secretmanagertest"
	"apigee-timescale/shared/secrets"
)

// password is distinctive so that any leak is easy to spot.
const password = "Sup3r-S3cret-Pa55"

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		payload  string
		want     secrets.DBCredentials
		wantErr  string
		wantPort int
	}{
		{
			name:     "complete",
			payload:  `{"username":"app","password":"` + password + `","host":"db","port":6432,"database":"apigee","sslmode":"require"}`,
			want:     secrets.DBCredentials{Username: "app", Password: password, Host: "db", Port: 6432, Database: "apigee", SSLMode: "require"},
			wantPort: 6432,
		},
		{
			name:     "port as string, extra fields ignored",
			payload:  `{"username":"app","password":"` + password + `","host":"db","port":"5433","database":"apigee","engine":"postgres"}`,
			want:     secrets.DBCredentials{Username: "app", Password: password, Host: "db", Port: 5433, Database: "apigee"},
			wantPort: 5433,
		},
		{
			name:     "port omitted defaults to 5432",
			payload:  `{"username":"app","password":"` + password + `","database":"apigee"}`,
			want:     secrets.DBCredentials{Username: "app", Password: password, Database: "apigee"},
			wantPort: 5432,
		},
		{name: "no username", payload: `{"password":"` + password + `","database":"d"}`, wantErr: "username is empty"},
		{name: "no password", payload: `{"username":"u","database":"d"}`, wantErr: "password is empty"},
		{name: "no database", payload: `{"username":"u","password":"` + password + `"}`, wantErr: "database is empty"},
		{name: "port out of range", payload: `{"username":"u","password":"` + password + `","database":"d","port":70000}`, wantErr: "out of range"},
		{name: "port not a number", payload: `{"username":"u","password":"` + password + `","database":"d","port":"x"}`, wantErr: `"port" must be an integer`},
		{name: "bad sslmode", payload: `{"username":"u","password":"` + password + `","database":"d","sslmode":"always"}`, wantErr: "unknown sslmode"},
		{name: "wrong type", payload: `{"username":"u","password":12,"database":"d"}`, wantErr: `field "password" must be string`},
		// The syntax error sits right after the password: encoding/json would
		// quote the offending character, the package must not.
		{name: "broken JSON", payload: `{"username":"u","password":"` + password + `"x}`, wantErr: "invalid JSON at byte offset"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := secrets.Parse([]byte(tc.payload))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), password) || strings.Contains(err.Error(), `"x`) {
					t.Fatalf("error leaks payload: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want || got.PortOrDefault() != tc.wantPort {
				t.Fatalf("got %#v (port %d), want %#v (port %d)", got, got.PortOrDefault(), tc.want, tc.wantPort)
			}
		})
	}
}

func TestCredentialsNeverPrintPassword(t *testing.T) {
	c := secrets.DBCredentials{Username: "app", Password: password, Host: "db", Port: 5432, Database: "apigee"}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("connect", "creds", c)
	slog.New(slog.NewTextHandler(&logged, nil)).Info("connect", "creds", c)
	outputs := map[string]string{
		"String": c.String(),
		"%v":     fmt.Sprintf("%v", c),
		"%+v":    fmt.Sprintf("%+v", c),
		"%#v":    fmt.Sprintf("%#v", c),
		//lint:ignore S1025 the point is fmt's own %s path on a pointer
		"%s ptr": fmt.Sprintf("%s", &c),
		"slog":   logged.String(),
	}
	for name, out := range outputs {
		t.Run(name, func(t *testing.T) {
			if strings.Contains(out, password) {
				t.Fatalf("password leaked: %s", out)
			}
			if !strings.Contains(out, "app") {
				t.Fatalf("output lacks the username: %s", out)
			}
		})
	}
	// The storage format, by contrast, must round-trip the password.
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	back, err := secrets.Parse(b)
	if err != nil || back != c {
		t.Fatalf("round trip = %#v, %v", back, err)
	}
}

func TestRead(t *testing.T) {
	ctx := context.Background()
	// Listen rather than Start: secrets.NewClient is the client under test.
	srv, addr, err := secretmanagertest.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	client, err := secrets.NewClient(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })

	const name = "projects/p/secrets/db"
	v1 := secrets.DBCredentials{Username: "app", Password: password + "1", Host: "h", Port: 5432, Database: "d"}
	v2 := v1
	v2.Password = password + "2"
	for _, c := range []secrets.DBCredentials{v1, v2} {
		b, _ := json.Marshal(c)
		if _, err := srv.Put(name, b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := srv.Put("projects/p/secrets/garbage", []byte(`{"username":"u","password":"`+password+`"!}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Put("projects/p/secrets/disabled", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := client.DisableSecretVersion(ctx, &secretmanagerpb.DisableSecretVersionRequest{Name: "projects/p/secrets/disabled/versions/1"}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name        string
		secret      string
		want        secrets.DBCredentials
		wantVersion string
		wantCode    codes.Code
		wantErr     string
	}{
		{name: "latest", secret: name, want: v2, wantVersion: name + "/versions/2"},
		{name: "pinned version", secret: name + "/versions/1", want: v1, wantVersion: name + "/versions/1"},
		{name: "unknown secret", secret: "projects/p/secrets/nope", wantCode: codes.NotFound, wantErr: "access projects/p/secrets/nope/versions/latest"},
		{name: "disabled latest", secret: "projects/p/secrets/disabled", wantCode: codes.FailedPrecondition, wantErr: "DISABLED"},
		{name: "invalid name", secret: "db", wantErr: "invalid secret name"},
		{name: "undecodable payload", secret: "projects/p/secrets/garbage", wantErr: "invalid JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, version, err := secrets.Read(ctx, client, tc.secret)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				if tc.wantCode != codes.OK && status.Code(err) != tc.wantCode {
					t.Fatalf("code = %v, want %v", status.Code(err), tc.wantCode)
				}
				if strings.Contains(err.Error(), password) {
					t.Fatalf("error leaks the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want || version != tc.wantVersion {
				t.Fatalf("got %v %s, want %v %s", got, version, tc.want, tc.wantVersion)
			}
		})
	}
}
