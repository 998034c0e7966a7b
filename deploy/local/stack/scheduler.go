package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Trigger calls an HTTP function the way a Cloud Scheduler HTTP job does
// (POST, the X-CloudScheduler headers, an optional OIDC bearer token) and
// decodes its JSON answer into out when out is not nil. A non-2xx status
// is an error that carries the body.
func Trigger(ctx context.Context, client *http.Client, url, job string, token func(context.Context) (string, error), out any) error {
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader("{}"))
	if err != nil {
		return fmt.Errorf("stack: trigger %s: %w", job, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Google-Cloud-Scheduler")
	req.Header.Set("X-CloudScheduler", "true")
	req.Header.Set("X-CloudScheduler-JobName", job)
	req.Header.Set("X-CloudScheduler-ScheduleTime", time.Now().UTC().Format(time.RFC3339))
	if token != nil {
		tok, err := token(ctx)
		if err != nil {
			return fmt.Errorf("stack: trigger %s: token: %w", job, err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("stack: trigger %s: %w", job, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("stack: trigger %s: read answer: %w", job, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("stack: trigger %s: %s: %s", job, resp.Status, strings.TrimSpace(string(body)))
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("stack: trigger %s: decode answer: %w", job, err)
		}
	}
	return nil
}
