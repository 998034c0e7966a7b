package rollup

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/dbconn"
)

func serve(h http.Handler, method string) (int, map[string]any) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, "/", nil))
	var body map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &body)
	return rec.Code, body
}

func TestHandlerInitialisation(t *testing.T) {
	t.Parallel()
	calls := 0
	fail := true
	db := testkit.New(t, testkit.Postgres)
	r := NewRunner(rollupPool(t, db), testConfig(), nil)
	h := newHandler(func(context.Context) (*Runner, error) {
		calls++
		if fail {
			return nil, errors.New("rollup config: RAW_RETENTION: \"x\" is not a retention")
		}
		return r, nil
	}, discardLogger())

	code, body := serve(h, http.MethodPost)
	if code != http.StatusInternalServerError || body["status"] != "error" || !strings.Contains(body["error"].(string), "RAW_RETENTION") {
		t.Fatalf("failed init: %d %v, want 500 with the JSON error", code, body)
	}
	fail = false
	code, body = serve(h, http.MethodGet)
	if code != http.StatusOK || body["status"] != "ok" || body["minutes_refreshed"] == nil {
		t.Fatalf("after init: %d %v, want 200 with a summary", code, body)
	}
	serve(h, http.MethodGet)
	if calls != 2 {
		t.Fatalf("initialised %d times, want 2 (once failed, once for good)", calls)
	}
	if code, _ := serve(h, http.MethodPut); code != http.StatusMethodNotAllowed {
		t.Fatalf("PUT answered %d", code)
	}
}

func TestHandlerRunFailure(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none?connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	pool.Close()
	r := NewRunner(pool, testConfig(), nil)
	h := newHandler(func(context.Context) (*Runner, error) { return r, nil }, discardLogger())
	code, body := serve(h, http.MethodPost)
	if code != http.StatusInternalServerError || body["status"] != "error" || body["error"] == "" {
		t.Fatalf("got %d %v, want 500 with status error", code, body)
	}
}

func TestRunnerNeedsTwoConnections(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
	t.Setenv(dbconn.EnvMaxConns, "1")
	if _, err := runnerFromEnv(context.Background()); err == nil || !strings.Contains(err.Error(), dbconn.EnvMaxConns) {
		t.Fatalf("DB_MAX_CONNS=1: got %v, want an error naming %s", err, dbconn.EnvMaxConns)
	}
}
