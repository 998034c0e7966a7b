package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"apigee-timescale/deploy/local/stack"
	"apigee-timescale/deploy/local/testkit"
	"apigee-timescale/functions/ingest"
	"apigee-timescale/shared/env"
	"apigee-timescale/shared/privacy"
)

const testRun = "run42"

// deliver stores records (id, address, email) through an ingest Service
// applying spec, as the demo's ingest does.
func deliver(t *testing.T, db *testkit.DB, spec string, recs [][3]string) {
	t.Helper()
	cfg, err := ingest.ConfigFrom(env.Map(map[string]string{privacy.EnvPrivacy: spec, privacy.EnvKey: strings.Repeat("k", 32)}))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ingest.NewService(cfg, ingest.Deps{DB: db.Admin})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for _, r := range recs {
		lines = append(lines, fmt.Sprintf(`{"schema":"apigee.call.v1","message_id":"rrt-1-%s-%s","received_at":"%s","organization":"acme-prod",`+
			`"environment":"prod","apiproxy":"orders-v1","request_verb":"GET","request_path":"/orders","response_status_code":200,`+
			`"tenant":"acme-retail","client_ip":%q,"developer_email":%q}`, testRun, r[0], now, r[1], r[2]))
	}
	lines = append(lines, `{"schema":"apigee.call.v1","client_ip":"203.0.113.9","developer_email":"edi@supplier.example"}`) // quarantined
	body, _ := json.Marshal(map[string]any{"message": map[string]any{
		"data": base64.StdEncoding.EncodeToString([]byte(strings.Join(lines, "\n"))), "messageId": "m-" + spec,
		"attributes": map[string]string{"tenant": "acme-retail"},
	}})
	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(string(body))))
	if w.Code != http.StatusNoContent {
		t.Fatalf("ingest answered %d %s", w.Code, w.Body)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestCollectPrivacy runs the report's queries: pseudonymised traffic is
// found clean; a row, a reject and a log line in clear are each counted.
func TestCollectPrivacy(t *testing.T) {
	testkit.Each(t, func(t *testing.T, db *testkit.DB) {
		p, err := privacy.ParsePolicy(demoPrivacy)
		if err != nil {
			t.Fatal(err)
		}
		d := &demo{db: &stack.Database{Admin: db.Admin}, privacy: p, logDir: t.TempDir(), runStart: time.Now().Add(-time.Minute)}
		if err := os.WriteFile(filepath.Join(d.logDir, "ingest.log"), []byte(`{"msg":"batch committed","rows":3}`+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		deliver(t, db, demoPrivacy, [][3]string{{"1", "203.0.113.7", "web-team@acme.example"}, {"2", "2001:db8::1a", "web-team@acme.example"}, {"3", "192.0.2.8", "ops@acme.example"}})
		pattern := "rrt-%-" + testRun + "-%"
		got, err := d.collectPrivacy(context.Background(), pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got.ClearRows != 0 || got.ClearRejects != 0 || got.ClearLogLines != 0 || len(got.Sample) != 3 {
			t.Fatalf("pseudonymised traffic: %+v", got)
		}
		for _, s := range got.Sample {
			if !strings.HasPrefix(s.DeveloperEmail, privacy.PseudonymPrefix) || (s.ClientIP != "203.0.113.0" && s.ClientIP != "192.0.2.0" && s.ClientIP != "2001:db8::") {
				t.Errorf("sample row %+v is not as stored under %s", s, demoPrivacy)
			}
		}

		deliver(t, db, "", [][3]string{{"4", "198.51.100.4", "mobile@acme.example"}})
		if err := os.WriteFile(filepath.Join(d.logDir, "rollup.log"), []byte("caller 198.51.100.4\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if got, err = d.collectPrivacy(context.Background(), pattern); err != nil {
			t.Fatal(err)
		}
		if got.ClearRows != 1 || got.ClearRejects != 1 || got.ClearLogLines != 1 {
			t.Fatalf("one row, one reject, one log line in clear; counted %+v", got)
		}
	})
}
