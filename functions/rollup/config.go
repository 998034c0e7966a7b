package rollup

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"apigee-timescale/shared/env"
)

// Environment variables read by ConfigFrom (besides shared/dbconn's), each
// with its default: the one place they are declared (the README's table is
// checked against them).
const (
	EnvRawRetention         = "RAW_RETENTION"
	DefaultRawRetention     = 30 * day
	EnvRejectsRetention     = "REJECTS_RETENTION"
	DefaultRejectsRetention = 14 * day
	EnvRollup1mRetention    = "ROLLUP_1M_RETENTION"
	Default1mRetention      = 90 * day
	EnvRollup1hRetention    = "ROLLUP_1H_RETENTION"
	Default1hRetention      = 400 * day

	EnvRunBudget               = "RUN_BUDGET"
	DefaultRunBudget           = 40 * time.Second
	EnvBatchMinutes            = "REFRESH_BATCH_MINUTES"
	DefaultBatchMinutes        = 24 * 60
	EnvPartitionsAheadDays     = "PARTITIONS_AHEAD_DAYS"
	DefaultPartitionsAheadDays = 7

	EnvVerifyBudget     = "VERIFY_BUDGET"
	DefaultVerifyBudget = 5 * time.Second

	EnvAlertTopic    = "ALERT_TOPIC"
	EnvPubSubProject = "PUBSUB_PROJECT"

	EnvAnomalyBaseline               = "ANOMALY_BASELINE"
	DefaultAnomalyBaseline           = time.Hour
	EnvAnomalySettle                 = "ANOMALY_SETTLE"
	DefaultAnomalySettle             = 2 * time.Minute
	EnvAnomalyLookback               = "ANOMALY_LOOKBACK"
	DefaultAnomalyLookback           = time.Hour
	EnvAnomalyMinCalls               = "ANOMALY_MIN_CALLS"
	DefaultAnomalyMinCalls           = 20
	EnvAnomalyMinBaselineMinutes     = "ANOMALY_MIN_BASELINE_MINUTES"
	DefaultAnomalyMinBaselineMinutes = 20
	EnvAnomalyZ                      = "ANOMALY_Z"
	DefaultAnomalyZ                  = 5.0
	EnvAnomalyMinErrorRateDelta      = "ANOMALY_MIN_ERROR_RATE_DELTA"
	DefaultAnomalyMinErrorRateDelta  = 0.05
	EnvAnomalyMinLatencyRatio        = "ANOMALY_MIN_LATENCY_RATIO"
	DefaultAnomalyMinLatencyRatio    = 1.5
	EnvAnomalyMinLatencyDeltaMS      = "ANOMALY_MIN_LATENCY_DELTA_MS"
	DefaultAnomalyMinLatencyDeltaMS  = 50.0
)

// Config is the rollup function's configuration, read from the environment
// once and validated at once. Retentions accept whole days ("30d") or Go
// durations ("36h"); "off" keeps a tier forever.
type Config struct {
	// RawRetention (RAW_RETENTION): raw api_calls chunks or partitions are
	// dropped once wholly older than this, and only after their rollups
	// are complete.
	RawRetention time.Duration
	// RejectsRetention (REJECTS_RETENTION): the same for ingest_rejects.
	RejectsRetention time.Duration
	// Rollup1mRetention (ROLLUP_1M_RETENTION): minute rollups. Must be at
	// least RawRetention: hours are rebuilt from minutes whenever late raw
	// rows arrive.
	Rollup1mRetention time.Duration
	// Rollup1hRetention (ROLLUP_1H_RETENTION): hourly rollups and
	// anomalies. Must be at least Rollup1mRetention.
	Rollup1hRetention time.Duration

	// RunBudget (RUN_BUDGET): the refresh starts no new batch after this
	// much time; what is left waits for the next run. Retention and anomaly
	// detection still run. Keep it under the scheduler's period (1 minute)
	// and attempt deadline.
	RunBudget time.Duration
	// BatchMinutes (REFRESH_BATCH_MINUTES): how many invalidated minutes
	// one refresh transaction recomputes at most. A run's first batch
	// takes at most an hour (firstBatchMinutes); each batch that read
	// fewer than growBelowRows raw rows doubles the next, up to this, so a
	// sparse backlog (hours of a few thousand calls) does not pay a
	// transaction's fixed cost per hour.
	BatchMinutes int
	// PartitionsAheadDays (PARTITIONS_AHEAD_DAYS): on plain PostgreSQL,
	// daily partitions are kept created this many days ahead.
	PartitionsAheadDays int

	// VerifyBudget (VERIFY_BUDGET, 0s = off): each run re-verifies
	// batches' rows and seals for about this long, continuing where the
	// previous run stopped (shared/audit's Verify; `make verify` checks
	// everything at once).
	VerifyBudget time.Duration

	// AlertTopic (ALERT_TOPIC, empty = no alerts): Pub/Sub topic, an ID or
	// projects/P/topics/T, that receives one message per new anomaly.
	AlertTopic string
	// PubSubProject (PUBSUB_PROJECT): the project of the Pub/Sub client;
	// required when ALERT_TOPIC is a bare ID, else taken from the topic name.
	PubSubProject string

	Anomaly AnomalyConfig
}

// AnomalyConfig tunes anomaly detection: per proxy (tenant, organization,
// environment, apiproxy), a minute's error rate or p95 latency is compared
// with the median of the same proxy's trailing minutes using a robust
// z-score (deviation / (1.4826 × median absolute deviation)).
type AnomalyConfig struct {
	// Baseline (ANOMALY_BASELINE): the trailing window.
	Baseline time.Duration
	// Settle (ANOMALY_SETTLE): minutes younger than this are not judged yet
	// (their data may still be arriving).
	Settle time.Duration
	// Lookback (ANOMALY_LOOKBACK): how far back a run catches up on minutes
	// not judged yet (after a pause, older minutes are skipped).
	Lookback time.Duration
	// MinCalls (ANOMALY_MIN_CALLS): minutes with fewer calls are neither
	// judged nor part of a baseline, so a quiet proxy pages no one.
	MinCalls int64
	// MinBaselineMinutes (ANOMALY_MIN_BASELINE_MINUTES): a minute is judged
	// only against at least this many baseline minutes.
	MinBaselineMinutes int
	// Z (ANOMALY_Z): the robust z-score that flags a minute.
	Z float64
	// MinErrorRateDelta (ANOMALY_MIN_ERROR_RATE_DELTA): the error rate must
	// also exceed the baseline by this much (0.05: 5 points).
	MinErrorRateDelta float64
	// MinLatencyRatio (ANOMALY_MIN_LATENCY_RATIO): p95 must also be at
	// least this multiple of the baseline...
	MinLatencyRatio float64
	// MinLatencyDeltaMS (ANOMALY_MIN_LATENCY_DELTA_MS): ...and at least
	// this many milliseconds above it.
	MinLatencyDeltaMS float64
}

// Off is the retention value that keeps a tier forever.
const Off time.Duration = math.MaxInt64

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	c, _ := ConfigFrom(env.Map(nil))
	return c
}

const day = 24 * time.Hour

// ConfigFromEnv reads and validates the configuration.
func ConfigFromEnv() (Config, error) {
	return ConfigFrom(env.New(os.Getenv))
}

func configFrom(getenv func(string) string) (Config, error) {
	return ConfigFrom(env.New(getenv))
}

// ConfigFrom reads the configuration through r and validates it; every
// problem is reported at once.
func ConfigFrom(r *env.Reader) (Config, error) {
	const positive = time.Nanosecond
	retention := func(name string, def time.Duration) time.Duration {
		return env.Parse(r, name, def, "a retention such as 30d, 720h or off", formatRetention, parseRetention)
	}
	c := Config{
		RawRetention:        retention(EnvRawRetention, DefaultRawRetention),
		RejectsRetention:    retention(EnvRejectsRetention, DefaultRejectsRetention),
		Rollup1mRetention:   retention(EnvRollup1mRetention, Default1mRetention),
		Rollup1hRetention:   retention(EnvRollup1hRetention, Default1hRetention),
		RunBudget:           r.Duration(EnvRunBudget, DefaultRunBudget, positive),
		BatchMinutes:        r.Int(EnvBatchMinutes, DefaultBatchMinutes, 1),
		PartitionsAheadDays: r.Int(EnvPartitionsAheadDays, DefaultPartitionsAheadDays, 1),
		VerifyBudget:        r.Duration(EnvVerifyBudget, DefaultVerifyBudget, 0),
		AlertTopic:          r.String(EnvAlertTopic, ""),
		PubSubProject:       r.String(EnvPubSubProject, ""),
		Anomaly: AnomalyConfig{
			Baseline:           r.Duration(EnvAnomalyBaseline, DefaultAnomalyBaseline, positive),
			Settle:             r.Duration(EnvAnomalySettle, DefaultAnomalySettle, positive),
			Lookback:           r.Duration(EnvAnomalyLookback, DefaultAnomalyLookback, positive),
			MinCalls:           int64(r.Int(EnvAnomalyMinCalls, DefaultAnomalyMinCalls, 1)),
			MinBaselineMinutes: r.Int(EnvAnomalyMinBaselineMinutes, DefaultAnomalyMinBaselineMinutes, 3),
			Z:                  r.Float(EnvAnomalyZ, DefaultAnomalyZ, 0),
			MinErrorRateDelta:  r.Float(EnvAnomalyMinErrorRateDelta, DefaultAnomalyMinErrorRateDelta, 0),
			MinLatencyRatio:    r.Float(EnvAnomalyMinLatencyRatio, DefaultAnomalyMinLatencyRatio, 0),
			MinLatencyDeltaMS:  r.Float(EnvAnomalyMinLatencyDeltaMS, DefaultAnomalyMinLatencyDeltaMS, 0),
		},
	}
	// Relations are judged only between values that parsed.
	if r.Err() == nil {
		if err := c.Validate(); err != nil {
			r.Fail(err)
		}
	}
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("rollup config: %w", err)
	}
	return c, nil
}

// Validate checks the relations between fields.
func (c Config) Validate() error {
	var errs []error
	for _, r := range []struct {
		name string
		d    time.Duration
	}{
		{"RAW_RETENTION", c.RawRetention},
		{"REJECTS_RETENTION", c.RejectsRetention},
		{"ROLLUP_1M_RETENTION", c.Rollup1mRetention},
		{"ROLLUP_1H_RETENTION", c.Rollup1hRetention},
	} {
		if r.d < day {
			errs = append(errs, fmt.Errorf("%s must be at least 1d, not %v", r.name, r.d))
		}
	}
	if c.Rollup1mRetention < c.RawRetention {
		errs = append(errs, errors.New("ROLLUP_1M_RETENTION must be at least RAW_RETENTION: hours are rebuilt from minutes while raw rows exist"))
	}
	if c.Rollup1hRetention < c.Rollup1mRetention {
		errs = append(errs, errors.New("ROLLUP_1H_RETENTION must be at least ROLLUP_1M_RETENTION"))
	}
	if c.RunBudget <= 0 {
		errs = append(errs, errors.New("RUN_BUDGET must be positive"))
	}
	if c.BatchMinutes < 1 {
		errs = append(errs, errors.New("REFRESH_BATCH_MINUTES must be at least 1"))
	}
	if c.PartitionsAheadDays < 1 || c.PartitionsAheadDays > 366 {
		errs = append(errs, errors.New("PARTITIONS_AHEAD_DAYS must be between 1 and 366"))
	}
	if c.AlertTopic != "" {
		if _, _, err := c.topic(); err != nil {
			errs = append(errs, err)
		}
	}
	a := c.Anomaly
	if a.Baseline < 5*time.Minute {
		errs = append(errs, errors.New("ANOMALY_BASELINE must be at least 5m"))
	}
	if a.Settle < 0 || a.Lookback < time.Minute {
		errs = append(errs, errors.New("ANOMALY_SETTLE must not be negative and ANOMALY_LOOKBACK must be at least 1m"))
	}
	if a.MinCalls < 1 {
		errs = append(errs, errors.New("ANOMALY_MIN_CALLS must be at least 1"))
	}
	if a.MinBaselineMinutes < 3 || time.Duration(a.MinBaselineMinutes)*time.Minute > a.Baseline {
		errs = append(errs, errors.New("ANOMALY_MIN_BASELINE_MINUTES must be at least 3 and fit in ANOMALY_BASELINE"))
	}
	if a.Z <= 0 {
		errs = append(errs, errors.New("ANOMALY_Z must be positive"))
	}
	if a.MinLatencyRatio < 1 {
		errs = append(errs, errors.New("ANOMALY_MIN_LATENCY_RATIO must be at least 1"))
	}
	return errors.Join(errs...)
}

// topic splits AlertTopic into the client's project and the topic as the
// publisher takes it.
func (c Config) topic() (project, topic string, err error) {
	t := c.AlertTopic
	if strings.HasPrefix(t, "projects/") {
		parts := strings.Split(t, "/")
		if len(parts) != 4 || parts[2] != "topics" || parts[1] == "" || parts[3] == "" {
			return "", "", fmt.Errorf("ALERT_TOPIC %q is not projects/P/topics/T", t)
		}
		project = parts[1]
		if c.PubSubProject != "" {
			project = c.PubSubProject
		}
		return project, t, nil
	}
	if strings.Contains(t, "/") {
		return "", "", fmt.Errorf("ALERT_TOPIC %q is neither a topic ID nor projects/P/topics/T", t)
	}
	if c.PubSubProject == "" {
		return "", "", errors.New("ALERT_TOPIC is a bare topic ID: set PUBSUB_PROJECT")
	}
	return c.PubSubProject, t, nil
}

// formatRetention writes a retention as the README shows it: whole days
// as "30d".
func formatRetention(d time.Duration) string {
	switch {
	case d == Off:
		return "off"
	case d%day == 0:
		return fmt.Sprintf("%dd", d/day)
	}
	return env.FormatDuration(d)
}

// parseRetention reads "30d", a Go duration, or "off".
func parseRetention(v string) (time.Duration, error) {
	if strings.EqualFold(v, "off") {
		return Off, nil
	}
	if n, ok := strings.CutSuffix(v, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 || days > 100000 {
			return 0, fmt.Errorf("%q is not a number of days such as 30d", v)
		}
		return time.Duration(days) * day, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a retention such as 30d, 720h or off", v)
	}
	return d, nil
}

// interval renders d as a PostgreSQL interval literal.
func interval(d time.Duration) string {
	return fmt.Sprintf("%d seconds", int64(d/time.Second))
}
