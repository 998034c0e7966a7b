package ingest

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/shared/dbconn"
	"apigee-timescale/shared/env"
	"apigee-timescale/shared/function"
)

// clearConfig blanks every variable ingest reads, so that the machine's
// environment cannot leak into a test.
func clearConfig(t *testing.T) {
	r := env.Map(nil)
	_, _ = ConfigFrom(r)
	_, _ = dbconn.ConfigFrom(r)
	for _, v := range r.Vars() {
		t.Setenv(v.Name, "")
	}
}

// TestDeployedFunction drives the registered Ingest handler, configured
// from the environment only: unconfigured, it answers a JSON 500 and
// starts nothing; once configured, the next delivery starts the Service
// and is stored. SIGTERM's drain (function.Shutdown) then closes it.
func TestDeployedFunction(t *testing.T) {
	db := testkit.New(t, testkit.TimescaleDB)
	h := service.HTTP((*Service).ServeHTTP)
	deliver := func(body string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h(w, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body)))
		return w
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	record := `{"schema":"apigee.call.v1","message_id":"fn-1","received_at":"` + now + `","organization":"acme",` +
		`"environment":"prod","apiproxy":"orders-v1","request_verb":"GET","request_path":"/orders/42",` +
		`"response_status_code":"200","total_response_time":"37","tenant":"tenant-a"}`

	clearConfig(t)
	w := deliver(record)
	var body map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != http.StatusInternalServerError || body["status"] != "error" {
		t.Fatalf("unconfigured: %d %q, want a JSON 500", w.Code, w.Body.String())
	}
	if strings.Contains(w.Body.String(), "DATABASE_URL") {
		t.Fatalf("the answer carries the start error (it goes to the log): %q", w.Body.String())
	}

	_, dsn := db.Login(t, "apigee_ingest")
	t.Setenv(dbconn.EnvDatabaseURL, dsn)
	if w := deliver(record); w.Code != http.StatusNoContent {
		t.Fatalf("configured: %d %q, want 204 (the failed start retried)", w.Code, w.Body.String())
	}
	if err := function.Shutdown(); err != nil {
		t.Fatalf("drain: %v", err)
	}
	var n int
	if err := db.Admin.QueryRow(context.Background(), "SELECT count(*) FROM apigee.api_calls WHERE message_id = 'fn-1'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d rows stored (err %v), want 1", n, err)
	}
}
