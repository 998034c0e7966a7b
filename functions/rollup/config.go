package rollup

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is the rollup function's configuration, read from the environment
// once and validated at once. Retentions accept whole days ("30d") or Go
// durations ("36h"); "off" keeps a tier forever.
type Config struct {
	// RawRetention (RAW_RETENTION, default 30d): raw api_calls chunks or
	// partitions are dropped once wholly older than this, and only after
	// their rollups are complete.
	RawRetention time.Duration
	// RejectsRetention (REJECTS_RETENTION, default 14d): the same for
	// ingest_rejects.
	RejectsRetention time.Duration
	// Rollup1mRetention (ROLLUP_1M_RETENTION, default 90d): minute rollups.
	// Must be at least RawRetention: hours are rebuilt from minutes whenever
	// late raw rows arrive.
	Rollup1mRetention time.Duration
	// Rollup1hRetention (ROLLUP_1H_RETENTION, default 400d): hourly rollups
	// and anomalies. Must be at least Rollup1mRetention.
	Rollup1hRetention time.Duration

	// RunBudget (RUN_BUDGET, default 40s): the refresh starts no new batch
	// after this much time; what is left waits for the next run. Retention
	// and anomaly detection still run. Keep it under the scheduler's period
	// (1 minute) and attempt deadline.
	RunBudget time.Duration
	// BatchMinutes (REFRESH_BATCH_MINUTES, default 60): how many invalidated
	// minutes one refresh transaction recomputes at most.
	BatchMinutes int
	// PartitionsAheadDays (PARTITIONS_AHEAD_DAYS, default 7): on plain
	// PostgreSQL, daily partitions are kept created this many days ahead.
	PartitionsAheadDays int

	// AlertTopic (ALERT_TOPIC, default empty = no alerts): Pub/Sub topic,
	// an ID or projects/P/topics/T, that receives one message per new
	// anomaly.
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
	// Baseline (ANOMALY_BASELINE, default 60m): the trailing window.
	Baseline time.Duration
	// Settle (ANOMALY_SETTLE, default 2m): minutes younger than this are not
	// judged yet (their data may still be arriving).
	Settle time.Duration
	// Lookback (ANOMALY_LOOKBACK, default 60m): how far back a run catches
	// up on minutes not judged yet (after a pause, older minutes are skipped).
	Lookback time.Duration
	// MinCalls (ANOMALY_MIN_CALLS, default 20): minutes with fewer calls are
	// neither judged nor part of a baseline, so a quiet proxy pages no one.
	MinCalls int64
	// MinBaselineMinutes (ANOMALY_MIN_BASELINE_MINUTES, default 20): a
	// minute is judged only against at least this many baseline minutes.
	MinBaselineMinutes int
	// Z (ANOMALY_Z, default 5): the robust z-score that flags a minute.
	Z float64
	// MinErrorRateDelta (ANOMALY_MIN_ERROR_RATE_DELTA, default 0.05): the
	// error rate must also exceed the baseline by this much (5 points).
	MinErrorRateDelta float64
	// MinLatencyRatio (ANOMALY_MIN_LATENCY_RATIO, default 1.5): p95 must
	// also be at least this multiple of the baseline...
	MinLatencyRatio float64
	// MinLatencyDeltaMS (ANOMALY_MIN_LATENCY_DELTA_MS, default 50): ...and
	// at least this many milliseconds above it.
	MinLatencyDeltaMS float64
}

// Off is the retention value that keeps a tier forever.
const Off time.Duration = math.MaxInt64

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		RawRetention:        30 * day,
		RejectsRetention:    14 * day,
		Rollup1mRetention:   90 * day,
		Rollup1hRetention:   400 * day,
		RunBudget:           40 * time.Second,
		BatchMinutes:        60,
		PartitionsAheadDays: 7,
		Anomaly: AnomalyConfig{
			Baseline:           time.Hour,
			Settle:             2 * time.Minute,
			Lookback:           time.Hour,
			MinCalls:           20,
			MinBaselineMinutes: 20,
			Z:                  5,
			MinErrorRateDelta:  0.05,
			MinLatencyRatio:    1.5,
			MinLatencyDeltaMS:  50,
		},
	}
}

const day = 24 * time.Hour

// ConfigFromEnv reads and validates the configuration.
func ConfigFromEnv() (Config, error) {
	return configFrom(os.Getenv)
}

func configFrom(getenv func(string) string) (Config, error) {
	c := DefaultConfig()
	var errs []error
	get := func(name string) string { return strings.TrimSpace(getenv(name)) }
	retention := func(name string, dst *time.Duration) {
		v := get(name)
		if v == "" {
			return
		}
		d, err := parseRetention(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			return
		}
		*dst = d
	}
	duration := func(name string, dst *time.Duration) {
		v := get(name)
		if v == "" {
			return
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be a positive duration such as 40s, not %q", name, v))
			return
		}
		*dst = d
	}
	integer := func(name string, dst *int, minimum int) {
		v := get(name)
		if v == "" {
			return
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < minimum {
			errs = append(errs, fmt.Errorf("%s must be an integer ≥ %d, not %q", name, minimum, v))
			return
		}
		*dst = n
	}
	float := func(name string, dst *float64) {
		v := get(name)
		if v == "" {
			return
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
			errs = append(errs, fmt.Errorf("%s must be a non-negative number, not %q", name, v))
			return
		}
		*dst = f
	}

	retention("RAW_RETENTION", &c.RawRetention)
	retention("REJECTS_RETENTION", &c.RejectsRetention)
	retention("ROLLUP_1M_RETENTION", &c.Rollup1mRetention)
	retention("ROLLUP_1H_RETENTION", &c.Rollup1hRetention)
	duration("RUN_BUDGET", &c.RunBudget)
	integer("REFRESH_BATCH_MINUTES", &c.BatchMinutes, 1)
	integer("PARTITIONS_AHEAD_DAYS", &c.PartitionsAheadDays, 1)
	c.AlertTopic = get("ALERT_TOPIC")
	c.PubSubProject = get("PUBSUB_PROJECT")
	duration("ANOMALY_BASELINE", &c.Anomaly.Baseline)
	duration("ANOMALY_SETTLE", &c.Anomaly.Settle)
	duration("ANOMALY_LOOKBACK", &c.Anomaly.Lookback)
	minCalls := int(c.Anomaly.MinCalls)
	integer("ANOMALY_MIN_CALLS", &minCalls, 1)
	c.Anomaly.MinCalls = int64(minCalls)
	integer("ANOMALY_MIN_BASELINE_MINUTES", &c.Anomaly.MinBaselineMinutes, 3)
	float("ANOMALY_Z", &c.Anomaly.Z)
	float("ANOMALY_MIN_ERROR_RATE_DELTA", &c.Anomaly.MinErrorRateDelta)
	float("ANOMALY_MIN_LATENCY_RATIO", &c.Anomaly.MinLatencyRatio)
	float("ANOMALY_MIN_LATENCY_DELTA_MS", &c.Anomaly.MinLatencyDeltaMS)

	if len(errs) == 0 {
		if err := c.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("rollup config: %w", errors.Join(errs...))
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
