package simulator

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"apigee-timescale/deploy/local/standin/apigee"
)

// Proxy identifies an API proxy deployment: the series the rollup judges
// anomalies on is (tenant, organization, environment, apiproxy).
type Proxy struct {
	Organization string `json:"organization"`
	Environment  string `json:"environment"`
	APIProxy     string `json:"apiproxy"`
}

func (p Proxy) String() string { return p.Organization + "/" + p.Environment + "/" + p.APIProxy }

// proxyModel is one proxy with its traffic characteristics.
type proxyModel struct {
	Proxy
	basepath string
	revision int
	target   string
	paths    []string // request paths below basepath; "{id}" is replaced
	// medianMS and sigma parameterise the lognormal total latency.
	medianMS float64
	sigma    float64
	// errorRate is the share of 5xx answers; clientErrorRate of 4xx.
	errorRate, clientErrorRate float64
	// noTarget answers from the proxy itself (e.g. a mock or cache).
	noTarget bool
}

// app is a developer app; its tenant is the app's custom attribute.
type app struct {
	name, email, product, clientID, tenant string
	jwt                                    bool // authenticates with a JWT rather than an API key
}

// org is an Apigee organization with its environments, proxies and apps.
type org struct {
	name    string
	weight  float64
	envs    []string
	envW    []float64
	proxies []proxyModel // in Zipf rank order
	proxyW  []float64
	apps    []app // in Zipf rank order
	appW    []float64
}

// zipf returns n weights proportional to 1/rank^s.
func zipf(n int, s float64) []float64 {
	w := make([]float64, n)
	for i := range w {
		w[i] = 1 / math.Pow(float64(i+1), s)
	}
	return w
}

// pick returns an index drawn with probability proportional to w.
func pick(r *rand.Rand, w []float64) int {
	var total float64
	for _, x := range w {
		total += x
	}
	u := r.Float64() * total
	for i, x := range w {
		if u < x {
			return i
		}
		u -= x
	}
	return len(w) - 1
}

// defaultOrgs is the simulated estate: three organizations of different
// sizes, each with Zipf-distributed proxies and apps, and tenants that are
// custom attributes of the developer apps (most traffic of an organization
// comes from its main tenant, as it does for a platform team's own apps).
func defaultOrgs() []org {
	p := func(org, env, name string, median float64, errRate float64, paths ...string) proxyModel {
		base := "/" + strings.ReplaceAll(name, "-v", "/v")
		return proxyModel{
			Proxy:           Proxy{org, env, name},
			basepath:        base,
			revision:        3 + len(name)%9,
			target:          strings.Split(name, "-")[0] + ".internal.example",
			paths:           paths,
			medianMS:        median,
			sigma:           0.45,
			errorRate:       errRate,
			clientErrorRate: 0.012,
		}
	}
	acme := org{
		name: "acme-prod", weight: 0.6,
		envs: []string{"prod", "test"}, envW: []float64{0.88, 0.12},
		proxies: []proxyModel{
			p("acme-prod", "", "orders-v1", 85, 0.004, "/items/{id}", "/items", "/{id}/status"),
			p("acme-prod", "", "catalog-v2", 60, 0.003, "/products/{id}", "/products", "/search"),
			p("acme-prod", "", "payments-v1", 240, 0.006, "/charges", "/charges/{id}", "/refunds"),
			p("acme-prod", "", "customers-v1", 70, 0.003, "/customers/{id}", "/customers"),
			p("acme-prod", "", "inventory-v1", 45, 0.002, "/stock/{id}", "/reservations"),
			p("acme-prod", "", "shipping-v1", 180, 0.008, "/quotes", "/labels/{id}"),
			p("acme-prod", "", "search-v1", 120, 0.003, "/query", "/suggest"),
			p("acme-prod", "", "recommendations-v1", 150, 0.01, "/for/{id}"),
			p("acme-prod", "", "notifications-v1", 35, 0.002, "/send", "/templates/{id}"),
			p("acme-prod", "", "loyalty-v1", 55, 0.003, "/points/{id}"),
		},
		apps: []app{
			{"acme-web", "web-team@acme.example", "acme-gold", "acmeWebK3y9", "acme-retail", false},
			{"acme-ios", "mobile@acme.example", "acme-gold", "acmeIosQ7x2", "acme-retail", true},
			{"acme-android", "mobile@acme.example", "acme-gold", "acmeAndP0z5", "acme-retail", true},
			{"acme-pos", "stores@acme.example", "acme-silver", "acmePosR2d2", "acme-retail", false},
			{"partner-portal", "partners@acme.example", "acme-partner", "acmePrtN8b1", "acme-b2b", false},
			{"warehouse-sync", "ops@acme.example", "acme-internal", "acmeWhsT4c6", "acme-internal", false},
			{"supplier-edi", "edi@supplier.example", "acme-partner", "acmeEdiM1k7", "acme-b2b", false},
			{"bi-export", "data@acme.example", "acme-internal", "acmeBixV5j3", "acme-internal", false},
		},
	}
	globex := org{
		name: "globex", weight: 0.3,
		envs: []string{"prod"}, envW: []float64{1},
		proxies: []proxyModel{
			p("globex", "", "quotes-v1", 110, 0.005, "/quotes", "/quotes/{id}"),
			p("globex", "", "policies-v2", 95, 0.004, "/policies/{id}", "/policies"),
			p("globex", "", "claims-v1", 210, 0.009, "/claims", "/claims/{id}/documents"),
			p("globex", "", "partners-v1", 75, 0.003, "/brokers/{id}"),
			p("globex", "", "documents-v1", 320, 0.006, "/documents/{id}"),
		},
		apps: []app{
			{"globex-portal", "portal@globex.example", "globex-std", "glbPrtA1b2", "globex-eu", true},
			{"broker-api", "brokers@globex.example", "globex-partner", "glbBrkC3d4", "globex-eu", false},
			{"globex-us-app", "us@globex.example", "globex-std", "glbUsaE5f6", "globex-us", false},
			{"claims-scanner", "claims@globex.example", "globex-internal", "glbClmG7h8", "globex-eu", false},
		},
	}
	initech := org{
		name: "initech", weight: 0.1,
		envs: []string{"prod"}, envW: []float64{1},
		proxies: []proxyModel{
			p("initech", "", "tps-reports-v1", 130, 0.005, "/reports", "/reports/{id}/cover-sheet"),
			p("initech", "", "staplers-v1", 40, 0.002, "/staplers/{id}"),
			p("initech", "", "payroll-v1", 260, 0.004, "/runs", "/runs/{id}"),
		},
		apps: []app{
			{"initech-intranet", "it@initech.example", "initech-std", "iniIntJ9k0", "initech", false},
			{"initech-mobile", "it@initech.example", "initech-std", "iniMobL1m2", "initech", true},
		},
	}
	orgs := []org{acme, globex, initech}
	for i := range orgs {
		o := &orgs[i]
		o.proxyW = zipf(len(o.proxies), 1.1)
		o.appW = zipf(len(o.apps), 1.3)
	}
	// The recommendations proxy answers from a cache without a target.
	orgs[0].proxies[7].noTarget = true
	return orgs
}

// model draws API calls. It is not safe for concurrent use.
type model struct {
	r      *rand.Rand
	orgs   []org
	orgW   []float64
	spikes []Spike
	runID  string
	seq    uint64
}

func newModel(seed uint64, runID string, spikes []Spike) *model {
	m := &model{
		r:      rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		orgs:   defaultOrgs(),
		spikes: spikes,
		runID:  runID,
	}
	for _, o := range m.orgs {
		m.orgW = append(m.orgW, o.weight)
	}
	return m
}

// Proxies lists every proxy of the estate, for reports.
func (m *model) proxies() []Proxy {
	var out []Proxy
	for _, o := range m.orgs {
		for _, env := range o.envs {
			for _, p := range o.proxies {
				out = append(out, Proxy{o.name, env, p.APIProxy})
			}
		}
	}
	return out
}

// Call is the ground truth of one simulated API call.
type Call struct {
	MessageID string
	At        time.Time
	Proxy
	Tenant   string
	App      string
	Status   int
	IsError  bool
	TotalMS  int
	TargetMS int // 0 when no target was called
}

// call draws one API call at event time at and returns the Apigee flow
// variables the shared flow would see for it, with its ground truth.
func (m *model) call(at time.Time) (map[string]string, Call) {
	r := m.r
	o := &m.orgs[pick(r, m.orgW)]
	env := o.envs[pick(r, o.envW)]
	pm := o.proxies[pick(r, o.proxyW)]
	a := o.apps[pick(r, o.appW)]
	px := Proxy{o.name, env, pm.APIProxy}

	// Latency: lognormal around the proxy's median; test environments are
	// slower and noisier.
	median, sigma := pm.medianMS, pm.sigma
	if env != "prod" {
		median, sigma = median*1.4, sigma*1.2
	}
	errRate := pm.errorRate
	for _, s := range m.spikes {
		if s.Proxy == px && !at.Before(s.From) && at.Before(s.To) {
			switch s.Metric {
			case MetricErrorRate:
				errRate = s.Value
			case MetricLatency:
				median *= s.Value
			}
		}
	}
	total := math.Exp(math.Log(median) + sigma*r.NormFloat64())
	total = math.Min(math.Max(total, 2), 60000)

	status, fault := 200, ""
	switch u := r.Float64(); {
	case u < errRate:
		status, fault = pickServerError(r)
	case u < errRate+pm.clientErrorRate:
		status, fault = pickClientError(r)
	default:
		if r.Float64() < 0.15 {
			status = 201
		}
	}
	verb := "GET"
	switch {
	case status == 201:
		verb = "POST"
	case r.Float64() < 0.12:
		verb = []string{"POST", "PUT", "DELETE", "PATCH"}[r.IntN(4)]
	}

	m.seq++
	msgID := fmt.Sprintf("rrt-%016x-%s-%d", r.Uint64(), m.runID, m.seq)
	start := at.UnixMilli()
	totalMS := int(total)
	path := pm.paths[r.IntN(len(pm.paths))]
	path = strings.ReplaceAll(path, "{id}", strconv.Itoa(1000+r.IntN(90000)))

	vars := map[string]string{
		"messageid":                              msgID,
		"client.received.start.timestamp":        strconv.FormatInt(start, 10),
		"system.timestamp":                       strconv.FormatInt(start+int64(totalMS), 10),
		"organization.name":                      o.name,
		"environment.name":                       env,
		"apiproxy.name":                          pm.APIProxy,
		"apiproxy.revision":                      strconv.Itoa(pm.revision),
		"proxy.basepath":                         pm.basepath,
		"request.verb":                           verb,
		"request.path":                           pm.basepath + path,
		"response.status.code":                   strconv.Itoa(status),
		"response.header.Content-Length":         strconv.Itoa(120 + r.IntN(8000)),
		"client.ip":                              clientIP(r),
		"is.error":                               strconv.FormatBool(status >= 400),
		"developer.app.name":                     a.name,
		"developer.email":                        a.email,
		"apiproduct.name":                        a.product,
		"client_id":                              a.clientID,
		"verifyapikey.VA-VerifyAPIKey.client_id": a.clientID,
		"verifyapikey.VA-VerifyAPIKey.tenant":    a.tenant,
	}
	apigee.RequestHeader(vars, "User-Agent", userAgents[r.IntN(len(userAgents))])
	// Behind Google's load balancer: the client, then the balancer's own
	// address (client.ip is the balancer's peer).
	apigee.RequestHeader(vars, "X-Forwarded-For", clientIP(r)+", 35.191.0.1")
	if verb != "GET" && verb != "DELETE" {
		vars["request.header.Content-Length"] = strconv.Itoa(40 + r.IntN(4000))
	}
	if fault != "" {
		vars["fault.name"] = fault
	}
	targetMS := 0
	if !pm.noTarget && status != 401 && status != 429 {
		// The target's share of the time; the rest is the proxy's policies.
		targetMS = int(total * (0.7 + 0.25*r.Float64()))
		sent := start + int64(totalMS-targetMS)/2
		vars["target.sent.start.timestamp"] = strconv.FormatInt(sent, 10)
		vars["target.received.end.timestamp"] = strconv.FormatInt(sent+int64(targetMS), 10)
		vars["target.host"] = pm.target
		vars[apigee.VarTargetResponseCode] = strconv.Itoa(status)
	}
	if a.jwt && status != 401 {
		vars["jwt.VJ-VerifyJWT.valid"] = "true"
		vars["jwt.VJ-VerifyJWT.decoded.claim.sub"] = fmt.Sprintf("user-%d", 1+r.IntN(5000))
		vars["jwt.VJ-VerifyJWT.decoded.claim.iss"] = "https://idp." + o.name + ".example/"
		vars["jwt.VJ-VerifyJWT.decoded.claim.scope"] = "api.read api.write"
	}
	truth := Call{
		MessageID: msgID, At: time.UnixMilli(start).UTC(), Proxy: px, Tenant: a.tenant, App: a.name,
		Status: status, IsError: status >= 400, TotalMS: totalMS, TargetMS: targetMS,
	}
	return vars, truth
}

func pickServerError(r *rand.Rand) (int, string) {
	switch u := r.Float64(); {
	case u < 0.45:
		return 500, "InternalServerError"
	case u < 0.7:
		return 503, "ServiceUnavailable"
	case u < 0.9:
		return 504, "GatewayTimeout"
	default:
		return 502, "BadGateway"
	}
}

func pickClientError(r *rand.Rand) (int, string) {
	switch u := r.Float64(); {
	case u < 0.4:
		return 404, "NotFound"
	case u < 0.7:
		return 401, "InvalidApiKey"
	case u < 0.9:
		return 429, "SpikeArrestViolation"
	default:
		return 400, "InvalidRequest"
	}
}

var userAgents = []string{
	"okhttp/4.12.0",
	"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15",
	"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
	"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
	"python-requests/2.31.0",
	"Go-http-client/2.0",
	"curl/8.5.0",
	"Apache-HttpClient/4.5.14 (Java/17.0.9)",
}

// clientIP draws an address from the documentation ranges (RFC 5737, 3849).
func clientIP(r *rand.Rand) string {
	switch r.IntN(4) {
	case 0:
		return fmt.Sprintf("192.0.2.%d", 1+r.IntN(254))
	case 1:
		return fmt.Sprintf("198.51.100.%d", 1+r.IntN(254))
	case 2:
		return fmt.Sprintf("203.0.113.%d", 1+r.IntN(254))
	default:
		return fmt.Sprintf("2001:db8::%x", 1+r.IntN(0xfffe))
	}
}

// diurnal is the relative traffic rate at hour h (0–24) of a day: quiet at
// night, a morning rise, a lunchtime dip, an afternoon peak and a small
// evening bump. Its mean over the day is 1.
func diurnal(h float64) float64 { return diurnalRaw(h) / diurnalMean }

func diurnalRaw(h float64) float64 {
	bump := func(mu, w float64) float64 {
		// Wrapped around midnight so the curve is continuous.
		d := math.Mod(math.Abs(h-mu), 24)
		d = math.Min(d, 24-d)
		return math.Exp(-d * d / (2 * w * w))
	}
	return 0.45 + 0.75*bump(10.5, 2.2) + 0.85*bump(15.5, 2.8) + 0.2*bump(20.5, 1.5)
}

var diurnalMean = func() float64 {
	const n = 24 * 60
	var sum float64
	for i := 0; i < n; i++ {
		sum += diurnalRaw(24 * float64(i) / n)
	}
	return sum / n
}()
