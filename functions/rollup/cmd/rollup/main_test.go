package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestServesRollupAtRoot starts the real server with no FUNCTION_TARGET
// and no database configuration: the function answers at "/" (not only at
// /Rollup) and its failed lazy initialisation is a JSON 500.
func TestServesRollupAtRoot(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	for _, k := range []string{"FUNCTION_TARGET", "DATABASE_URL", "DB_SECRET", "CLOUDSQL_INSTANCE", "DB_IAM_USER", "K_SERVICE"} {
		t.Setenv(k, "")
	}
	t.Setenv("PORT", fmt.Sprint(port))
	go main()

	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	var resp *http.Response
	for i := 0; i < 100; i++ {
		if resp, err = http.Post(url, "application/json", nil); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("server never answered: %v", err)
	}
	defer resp.Body.Close()
	var body map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("answer is not JSON: %v", err)
	}
	if resp.StatusCode != http.StatusInternalServerError || body["status"] != "error" || body["error"] == "" {
		t.Fatalf("got %d %v, want a JSON 500 naming the configuration problem", resp.StatusCode, body)
	}
	t.Logf("answer without configuration: %s", body["error"])
}
