package rollup

import (
	"strings"
	"testing"
	"time"
)

func TestConfigFromEnv(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		env     map[string]string
		check   func(Config) bool
		wantErr string
	}{
		{"defaults", nil, func(c Config) bool {
			return c.RawRetention == 30*day && c.RejectsRetention == 14*day && c.Rollup1mRetention == 90*day &&
				c.Rollup1hRetention == 400*day && c.RunBudget == 40*time.Second && c.BatchMinutes == 1440 &&
				c.AlertTopic == "" && c.Anomaly.Z == 5 && c.Anomaly.MinCalls == 20
		}, ""},
		{"days and durations", map[string]string{"RAW_RETENTION": "45d", "ROLLUP_1M_RETENTION": "2160h", "RUN_BUDGET": "25s",
			"ANOMALY_Z": "4.5", "ANOMALY_MIN_CALLS": "50"}, func(c Config) bool {
			return c.RawRetention == 45*day && c.Rollup1mRetention == 90*day && c.RunBudget == 25*time.Second &&
				c.Anomaly.Z == 4.5 && c.Anomaly.MinCalls == 50
		}, ""},
		{"defaults are the declared constants", nil, func(c Config) bool {
			a := c.Anomaly
			return c.RawRetention == DefaultRawRetention && c.RejectsRetention == DefaultRejectsRetention &&
				c.Rollup1mRetention == Default1mRetention && c.Rollup1hRetention == Default1hRetention &&
				c.RunBudget == DefaultRunBudget && c.BatchMinutes == DefaultBatchMinutes && c.PartitionsAheadDays == DefaultPartitionsAheadDays &&
				a.Baseline == DefaultAnomalyBaseline && a.Settle == DefaultAnomalySettle && a.Lookback == DefaultAnomalyLookback &&
				a.MinCalls == DefaultAnomalyMinCalls && a.MinBaselineMinutes == DefaultAnomalyMinBaselineMinutes && a.Z == DefaultAnomalyZ &&
				a.MinErrorRateDelta == DefaultAnomalyMinErrorRateDelta && a.MinLatencyRatio == DefaultAnomalyMinLatencyRatio &&
				a.MinLatencyDeltaMS == DefaultAnomalyMinLatencyDeltaMS && c == DefaultConfig()
		}, ""},
		{"values are trimmed", map[string]string{"RAW_RETENTION": " 45d\t", "ANOMALY_Z": " 4 ", "ALERT_TOPIC": " projects/p/topics/a "},
			func(c Config) bool {
				return c.RawRetention == 45*day && c.Anomaly.Z == 4 && c.AlertTopic == "projects/p/topics/a"
			}, ""},
		{"off keeps forever", map[string]string{"RAW_RETENTION": "off", "ROLLUP_1M_RETENTION": "OFF", "ROLLUP_1H_RETENTION": "off"},
			func(c Config) bool { return c.RawRetention == Off && c.Rollup1hRetention == Off }, ""},
		{"topic name carries its project", map[string]string{"ALERT_TOPIC": "projects/p1/topics/alerts"}, func(c Config) bool {
			p, topic, err := c.topic()
			return err == nil && p == "p1" && topic == "projects/p1/topics/alerts"
		}, ""},
		{"topic ID with project", map[string]string{"ALERT_TOPIC": "alerts", "PUBSUB_PROJECT": "p2"}, func(c Config) bool {
			p, topic, err := c.topic()
			return err == nil && p == "p2" && topic == "alerts"
		}, ""},
		{"topic ID without project", map[string]string{"ALERT_TOPIC": "alerts"}, nil, "PUBSUB_PROJECT"},
		{"bad topic", map[string]string{"ALERT_TOPIC": "projects/p/subscriptions/s"}, nil, "ALERT_TOPIC"},
		{"bad retention", map[string]string{"RAW_RETENTION": "thirty"}, nil, "RAW_RETENTION"},
		{"under a day", map[string]string{"REJECTS_RETENTION": "12h"}, nil, "REJECTS_RETENTION"},
		{"minutes shorter than raw", map[string]string{"RAW_RETENTION": "120d"}, nil, "ROLLUP_1M_RETENTION must be at least RAW_RETENTION"},
		{"hours shorter than minutes", map[string]string{"ROLLUP_1H_RETENTION": "30d"}, nil, "ROLLUP_1H_RETENTION"},
		{"raw forever needs rollups forever", map[string]string{"RAW_RETENTION": "off"}, nil, "ROLLUP_1M_RETENTION"},
		{"bad budget", map[string]string{"RUN_BUDGET": "-1s"}, nil, "RUN_BUDGET"},
		{"bad batch", map[string]string{"REFRESH_BATCH_MINUTES": "0"}, nil, "REFRESH_BATCH_MINUTES"},
		{"bad threshold", map[string]string{"ANOMALY_Z": "NaN"}, nil, "ANOMALY_Z"},
		{"baseline too short for its minimum", map[string]string{"ANOMALY_BASELINE": "10m"}, nil, "ANOMALY_MIN_BASELINE_MINUTES"},
		{"every error at once", map[string]string{"RUN_BUDGET": "x", "ANOMALY_MIN_CALLS": "-3"}, nil, "ANOMALY_MIN_CALLS"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := configFrom(func(k string) string { return c.env[k] })
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want one mentioning %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !c.check(cfg) {
				t.Fatalf("config %+v", cfg)
			}
		})
	}
}

func TestRuns(t *testing.T) {
	t.Parallel()
	at := func(m int) time.Time { return time.Date(2025, 1, 1, 0, m, 0, 0, time.UTC) }
	got := runs([]time.Time{at(1), at(2), at(3), at(7), at(9), at(10)}, time.Minute)
	want := []span{{at(1), at(4)}, {at(7), at(8)}, {at(9), at(11)}}
	if len(got) != len(want) {
		t.Fatalf("runs %v, want %v", got, want)
	}
	for i := range want {
		if !got[i].from.Equal(want[i].from) || !got[i].to.Equal(want[i].to) {
			t.Fatalf("runs %v, want %v", got, want)
		}
	}
}
