// Package apigeeapi is an in-process stand-in of the Apigee management
// API's app listing, reached through the real Go client
// (google.golang.org/api/apigee/v1) pointed at its URL. It imitates
//
//	GET /v1/organizations/{org}/apps
//
// as documented at
// https://cloud.google.com/apigee/docs/reference/apis/apigee/rest/v1/organizations.apps/list
// with the App resource of
// https://cloud.google.com/apigee/docs/reference/apis/apigee/rest/v1/organizations.developers.apps#DeveloperApp
// and its attributes ({name, value}, the Attribute resource):
//
//   - the answer is {"app": [...], "nextPageToken": "..."}; nextPageToken
//     is omitted on the last page, and a request with pageToken continues
//     there;
//   - pageSize is at most 1000 ("values above 1000 will be coerced to
//     1000", also the default); PageLimit lowers that ceiling so that tests
//     see several pages;
//   - status filters approved or revoked apps and defaults to approved, so
//     a revoked app is not listed unless asked for;
//   - expand=true returns whole apps (name, status, attributes, ...);
//     without it only appId is set;
//   - errors are Google's JSON error body {"error": {code, message,
//     status}}.
//
// Differences: no authentication, no filter/ids/apiProduct parameters,
// page tokens are plain app ids, apps are listed in appId order.
package apigeeapi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Attribute is a custom attribute of an app.
type Attribute struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// App is the part of the App resource the stand-in keeps.
type App struct {
	AppID       string      `json:"appId"`
	Name        string      `json:"name,omitempty"`
	Status      string      `json:"status,omitempty"`
	DeveloperID string      `json:"developerId,omitempty"`
	Attributes  []Attribute `json:"attributes,omitempty"`
}

// Server is the stand-in; URL is its base (the client's endpoint).
type Server struct {
	URL string
	// PageLimit, when positive, caps every page below the API's 1000.
	PageLimit int

	mu    sync.Mutex
	orgs  map[string]map[string]App
	fail  []int
	pages int
}

// Start serves a stand-in until the test ends.
func Start(tb testing.TB) *Server {
	s := &Server{orgs: map[string]map[string]App{}}
	srv := httptest.NewServer(http.HandlerFunc(s.serve))
	tb.Cleanup(srv.Close)
	s.URL = srv.URL + "/"
	return s
}

// Put creates or replaces an app of org; an empty status is "approved".
func (s *Server) Put(org string, a App) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a.Status == "" {
		a.Status = "approved"
	}
	if s.orgs[org] == nil {
		s.orgs[org] = map[string]App{}
	}
	a.Attributes = slices.Clone(a.Attributes)
	s.orgs[org][a.AppID] = a
}

// Delete removes an app.
func (s *Server) Delete(org, appID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.orgs[org], appID)
}

// FailNext makes the next request answer code with an error body.
func (s *Server) FailNext(code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = append(s.fail, code)
}

// Pages counts the pages served.
func (s *Server) Pages() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pages
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.fail) > 0 {
		code := s.fail[0]
		s.fail = s.fail[1:]
		writeError(w, code, "injected failure")
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if r.Method != http.MethodGet || len(parts) != 4 || parts[0] != "v1" || parts[1] != "organizations" || parts[3] != "apps" {
		writeError(w, http.StatusNotFound, "not found: "+r.URL.Path)
		return
	}
	apps, ok := s.orgs[parts[2]]
	if !ok {
		writeError(w, http.StatusForbidden, "Permission denied on resource organizations/"+parts[2]+" (or it may not exist)")
		return
	}
	q := r.URL.Query()
	status := q.Get("status")
	if status == "" {
		status = "approved"
	}
	size := 1000
	if n, err := strconv.Atoi(q.Get("pageSize")); err == nil && n > 0 && n < size {
		size = n
	}
	if s.PageLimit > 0 && s.PageLimit < size {
		size = s.PageLimit
	}
	ids := make([]string, 0, len(apps))
	for id, a := range apps {
		if a.Status == status && id >= q.Get("pageToken") {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	var body struct {
		App           []App  `json:"app,omitempty"`
		NextPageToken string `json:"nextPageToken,omitempty"`
	}
	for i, id := range ids {
		if i == size {
			body.NextPageToken = id
			break
		}
		a := apps[id]
		if q.Get("expand") != "true" {
			a = App{AppID: id}
		}
		body.App = append(body.App, a)
	}
	s.pages++
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(body)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	status := map[int]string{400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}[code]
	if status == "" {
		status = "INTERNAL"
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": code, "message": msg, "status": status}})
}
