package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/pushauth"
	"apigee-timescale/shared/secrets"
)

// TestMain doubles as the child process of TestProcessLifecycle.
func TestMain(m *testing.M) {
	switch os.Getenv("STACK_TEST_CHILD") {
	case "serve":
		ln, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
		if err != nil {
			os.Exit(3)
		}
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM)
		go func() { _ = http.Serve(ln, http.NotFoundHandler()) }()
		<-ch
		fmt.Println("drained")
		os.Exit(0)
	case "crash":
		fmt.Println("no configuration")
		os.Exit(4)
	}
	os.Exit(m.Run())
}

func TestProcessLifecycle(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t.Run("serves, reports its size, drains on SIGTERM", func(t *testing.T) {
		port, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		logs := &SyncBuffer{}
		p, err := StartProcess(ctx, "child", self, port, []string{"STACK_TEST_CHILD=serve"}, logs)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get(p.URL)
		if err != nil {
			t.Fatalf("process listens but does not answer: %v", err)
		}
		resp.Body.Close()
		if rss, err := p.RSS(); err != nil || rss < 1<<20 {
			t.Errorf("RSS = %d, %v", rss, err)
		}
		if err := p.Stop(5 * time.Second); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if !strings.Contains(logs.String(), "drained") {
			t.Errorf("log %q: the child did not see SIGTERM", logs.String())
		}
	})
	t.Run("exits before listening", func(t *testing.T) {
		port, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		logs := &SyncBuffer{}
		_, err = StartProcess(ctx, "child", self, port, []string{"STACK_TEST_CHILD=crash"}, logs)
		if err == nil || !strings.Contains(err.Error(), "exited before listening") {
			t.Fatalf("err = %v, want an early exit", err)
		}
		if !strings.Contains(logs.String(), "no configuration") {
			t.Errorf("log %q lacks the child's output", logs.String())
		}
	})
}

func TestRecorderKeysAttemptsByMessageID(t *testing.T) {
	statuses := map[string]int{"m-ack": http.StatusNoContent, "m-nack": http.StatusServiceUnavailable}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var env struct {
			Message struct {
				MessageID string `json:"messageId"`
			} `json:"message"`
		}
		id := r.Header.Get("X-Goog-Pubsub-Message-Id")
		if id == "" {
			_ = json.NewDecoder(r.Body).Decode(&env)
			id = env.Message.MessageID
		}
		w.WriteHeader(statuses[id])
	}))
	defer srv.Close()
	rec := NewRecorder(nil)
	c := rec.Client()
	post := func(body string, hdr map[string]string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	post(`{"message":{"data":"e30=","messageId":"m-ack"},"subscription":"s"}`, nil)
	post(`{"message":{"data":"e30=","messageId":"m-nack"},"subscription":"s"}`, nil)
	post(`{"message":{"data":"e30=","messageId":"m-nack"},"subscription":"s"}`, nil)
	post(`{}`, map[string]string{"X-Goog-Pubsub-Message-Id": "m-ack"})

	if got := len(rec.Attempts("m-nack")); got != 2 {
		t.Errorf("m-nack: %d attempts, want 2", got)
	}
	acked := rec.Acked()
	if _, ok := acked["m-ack"]; !ok || len(acked) != 1 {
		t.Errorf("acked = %v, want only m-ack", acked)
	}
	if s := rec.Statuses(); s[204] != 2 || s[503] != 2 {
		t.Errorf("statuses = %v", s)
	}
	if f := rec.Failed(); f != 2 {
		t.Errorf("failed = %d, want 2", f)
	}

	// A refused connection is an attempt with status 0.
	srv.Close()
	post2 := func() {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(`{"message":{"messageId":"m-gone"}}`))
		if _, err := c.Do(req); err == nil {
			t.Fatal("request to a closed server succeeded")
		}
	}
	post2()
	if as := rec.Attempts("m-gone"); len(as) != 1 || as[0].Status != 0 || as[0].Err == "" {
		t.Errorf("m-gone attempts = %+v", as)
	}
}

func TestSignerTokensPassPushAuth(t *testing.T) {
	s, err := NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	const aud, email = "http://127.0.0.1:9/", "push@p.iam.gserviceaccount.com"
	ctx := context.Background()
	v, err := pushauth.NewVerifier(ctx, pushauth.Config{Audience: aud, ServiceAccount: email, HTTPClient: s.HTTPClient()})
	if err != nil {
		t.Fatal(err)
	}
	verify := func(src func(context.Context) (string, error)) error {
		tok, err := src(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest(http.MethodPost, aud, nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		_, err = v.Verify(ctx, r)
		return err
	}
	good := s.TokenSource(aud, email, time.Hour)
	if err := verify(good); err != nil {
		t.Fatalf("good token refused: %v", err)
	}
	a, _ := good(ctx)
	b, _ := good(ctx)
	if a != b {
		t.Error("token source signs a new token per call; it should reuse one until half its lifetime")
	}
	for name, src := range map[string]func(context.Context) (string, error){
		"wrong audience": s.TokenSource("http://other/", email, time.Hour),
		"wrong email":    s.TokenSource(aud, "x@p.iam.gserviceaccount.com", time.Hour),
		"expired":        s.TokenSource(aud, email, -time.Hour),
	} {
		if err := verify(src); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestTriggerActsLikeCloudScheduler(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("X-CloudScheduler") != "true" || r.Header.Get("X-CloudScheduler-JobName") != "job" ||
			r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if r.URL.Query().Get("fail") != "" {
			http.Error(w, `{"status":"error"}`, http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte(`{"status":"ok","n":3}`))
	}))
	defer srv.Close()
	tok := func(context.Context) (string, error) { return "tok", nil }
	var out struct {
		Status string
		N      int
	}
	if err := Trigger(context.Background(), nil, srv.URL, "job", tok, &out); err != nil || out.Status != "ok" || out.N != 3 {
		t.Fatalf("Trigger = %v, %+v", err, out)
	}
	if err := Trigger(context.Background(), nil, srv.URL+"?fail=1", "job", tok, nil); err == nil || !strings.Contains(err.Error(), "500") {
		t.Fatalf("Trigger on a failing job = %v, want the 500", err)
	}
}

func TestSecretManagerHoldsCredentials(t *testing.T) {
	sm, err := StartSecretManager()
	if err != nil {
		t.Fatal(err)
	}
	defer sm.Stop()
	ctx := context.Background()
	name, err := sm.CreateSecret(ctx, "p", "db")
	if err != nil {
		t.Fatal(err)
	}
	creds, err := Credentials("postgres://x:y@127.0.0.1:5544/apigee?sslmode=disable", "apigee_ingest_a", "pw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sm.PutCredentials(name, creds); err != nil {
		t.Fatal(err)
	}
	c, err := secrets.NewClient(ctx, sm.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, version, err := secrets.Read(ctx, c, name)
	if err != nil {
		t.Fatal(err)
	}
	if got != creds || version != name+"/versions/1" || got.Port != 5544 || got.Database != "apigee" {
		t.Fatalf("read %v from %s, want %v", got, version, creds)
	}
}

func TestDatabaseLifecycle(t *testing.T) {
	server := testkit.ServerURL(t, testkit.TimescaleDB)
	ctx := context.Background()
	name := "stack_test_" + RandomSuffix(4)
	db, err := CreateDatabase(ctx, server, name)
	if err != nil {
		t.Fatal(err)
	}
	role := "stack_test_" + RandomSuffix(4)
	dsn, err := db.Login(ctx, role, "secret-"+RandomSuffix(8), "apigee_ingest")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.DropRole(ctx, role) }()
	// The login works and is in the group; a second Login re-passwords.
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("log in as %s: %v", role, err)
	}
	c.Close(ctx)
	again, err := OpenDatabase(ctx, db.URL) // migrating again is a no-op
	if err != nil {
		t.Fatal(err)
	}
	again.Admin.Close()
	n, err := db.Count(ctx, "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $1", role)
	if err != nil || n != 1 {
		t.Fatalf("memberships of %s = %d, %v", role, n, err)
	}
	if dsn2, err := db.Login(ctx, role, "other-"+RandomSuffix(8)); err != nil || dsn2 == dsn {
		t.Fatalf("re-password: %v", err)
	}
	if err := db.Close(ctx); err != nil {
		t.Fatal(err)
	}
	gone, err := CreateDatabase(ctx, server, name) // recreated from scratch
	if err != nil {
		t.Fatal(err)
	}
	if n, err := gone.Count(ctx, "SELECT count(*) FROM apigee.api_calls"); err != nil || n != 0 {
		t.Fatalf("fresh database has %d rows, %v", n, err)
	}
	if err := gone.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
