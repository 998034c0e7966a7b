package scram

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"regexp"
	"testing"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/dbconn"
)

// TestSCRAMKeysRFC7677 checks the key derivation against the exchange in
// RFC 7677 §3 (user "user", password "pencil"): the server signature proves
// ServerKey, and the client proof, unmasked with StoredKey, proves
// ClientKey and so StoredKey.
func TestSCRAMKeysRFC7677(t *testing.T) {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	k, err := keysFor("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	const nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	authMessage := "n=user,r=rOprNGfwEbeRWgbNEkqO," +
		"r=" + nonce + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096," +
		"c=biws,r=" + nonce
	mac := func(key []byte) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(authMessage))
		return h.Sum(nil)
	}
	b64 := base64.StdEncoding.EncodeToString
	if got, want := b64(mac(k.server)), "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="; got != want {
		t.Errorf("server signature = %s, want %s", got, want)
	}
	proof := make([]byte, len(k.client))
	sig := mac(k.stored)
	for i := range proof {
		proof[i] = k.client[i] ^ sig[i]
	}
	if got, want := b64(proof), "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="; got != want {
		t.Errorf("client proof = %s, want %s", got, want)
	}
	stored := sha256.Sum256(k.client)
	if !hmac.Equal(stored[:], k.stored) {
		t.Error("StoredKey is not SHA-256(ClientKey)")
	}
}

var verifierRe = regexp.MustCompile(`^SCRAM-SHA-256\$4096:[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=$`)

func TestVerifierFormat(t *testing.T) {
	seen := map[string]bool{}
	for range 3 {
		pw, err := NewPassword()
		if err != nil {
			t.Fatal(err)
		}
		if len(pw) != 43 || seen[pw] {
			t.Fatalf("password of length %d (or repeated)", len(pw))
		}
		seen[pw] = true
		v, err := Verifier(pw)
		if err != nil {
			t.Fatal(err)
		}
		if !verifierRe.MatchString(v) {
			t.Fatalf("verifier %q does not have PostgreSQL's shape", v)
		}
		v2, _ := Verifier(pw)
		if v2 == v {
			t.Fatal("two verifiers of one password share a salt")
		}
	}
}

// TestVerifierLogsIn sets a client-computed verifier and logs in with the
// plaintext: PostgreSQL must store the verifier as given (had it not
// recognised the format, it would have hashed it as a password) and accept
// the password it was made from, and only that one.
func TestVerifierLogsIn(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		testkit.RequirePasswordAuth(t, db.Kind) // a wrong password must fail
		ctx := context.Background()
		role := "t_scram_" + randHex(t)
		pw, err := NewPassword()
		if err != nil {
			t.Fatal(err)
		}
		v, err := Verifier(pw)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Admin.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", pgx.Identifier{role}.Sanitize(), v)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = db.Admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+pgx.Identifier{role}.Sanitize())
		})
		var stored string
		if err := db.Admin.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		if stored != v {
			t.Fatalf("stored %q, want the verifier as sent", stored)
		}
		cfg, err := pgx.ParseConfig(db.URL)
		if err != nil {
			t.Fatal(err)
		}
		login := func(password string) error {
			c := cfg.Copy()
			c.User, c.Password = role, password
			conn, err := pgx.ConnectConfig(ctx, c)
			if err != nil {
				return err
			}
			defer conn.Close(ctx)
			var u string
			return conn.QueryRow(ctx, "SELECT current_user::text").Scan(&u)
		}
		if err := login(pw); err != nil {
			t.Fatalf("login with the password: %v", err)
		}
		wrong := pw[:42] + "x"
		if wrong == pw {
			wrong = pw[:42] + "y"
		}
		if err := login(wrong); !dbconn.IsAuthError(err) {
			t.Fatalf("login with a wrong password: %v, want an authentication error", err)
		}
	})
}

func randHex(t testing.TB) string {
	pw, err := NewPassword()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", pw[:4])
}
