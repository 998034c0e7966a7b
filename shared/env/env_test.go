package env_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"apigee-timescale/shared/env"
)

func TestReader(t *testing.T) {
	tests := []struct {
		name    string
		value   string // of the variable X
		read    func(r *env.Reader) any
		want    any
		wantErr string // substring of the error; "" for none
	}{
		{"string default", "", func(r *env.Reader) any { return r.String("X", "d") }, "d", ""},
		{"string trimmed", "  v \t\n", func(r *env.Reader) any { return r.String("X", "d") }, "v", ""},
		{"blank string is unset", " \t ", func(r *env.Reader) any { return r.String("X", "d") }, "d", ""},
		{"int default", "", func(r *env.Reader) any { return r.Int("X", 7, 1) }, 7, ""},
		{"int trimmed", " 42 ", func(r *env.Reader) any { return r.Int("X", 7, 1) }, 42, ""},
		{"int not a number", "lots", func(r *env.Reader) any { return r.Int("X", 7, 1) }, 7, `X must be an integer of at least 1, not "lots"`},
		{"int below its minimum", "0", func(r *env.Reader) any { return r.Int("X", 7, 1) }, 7, `X must be an integer of at least 1, not "0"`},
		{"duration default", "", func(r *env.Reader) any { return r.Duration("X", 5*time.Millisecond, time.Nanosecond) }, 5 * time.Millisecond, ""},
		{"duration trimmed", "\t250ms ", func(r *env.Reader) any { return r.Duration("X", time.Second, time.Nanosecond) }, 250 * time.Millisecond, ""},
		{"duration without unit", "10", func(r *env.Reader) any { return r.Duration("X", 9*time.Second, time.Nanosecond) }, 9 * time.Second, `X must be a positive duration such as 9s, not "10"`},
		{"duration zero when positive", "0s", func(r *env.Reader) any { return r.Duration("X", time.Second, time.Nanosecond) }, time.Second, "X must be a positive duration"},
		{"duration zero allowed", "0s", func(r *env.Reader) any { return r.Duration("X", time.Minute, 0) }, time.Duration(0), ""},
		{"duration negative when non-negative", "-1m", func(r *env.Reader) any { return r.Duration("X", time.Minute, 0) }, time.Minute, "X must be a non-negative duration"},
		{"duration under a minimum", "30s", func(r *env.Reader) any { return r.Duration("X", time.Hour, time.Minute) }, time.Hour, "X must be a duration of at least 1m"},
		{"bool default", "", func(r *env.Reader) any { return r.Bool("X", false) }, false, ""},
		{"bool trimmed", " true ", func(r *env.Reader) any { return r.Bool("X", false) }, true, ""},
		{"bool as 1", "1", func(r *env.Reader) any { return r.Bool("X", false) }, true, ""},
		{"bool not a bool", "maybe", func(r *env.Reader) any { return r.Bool("X", false) }, false, `X must be a boolean (true or false), not "maybe"`},
		{"float default", "", func(r *env.Reader) any { return r.Float("X", 1.5, 0) }, 1.5, ""},
		{"float trimmed", " 4.5", func(r *env.Reader) any { return r.Float("X", 1.5, 0) }, 4.5, ""},
		{"float NaN", "NaN", func(r *env.Reader) any { return r.Float("X", 1.5, 0) }, 1.5, "X must be a non-negative number"},
		{"float negative", "-1", func(r *env.Reader) any { return r.Float("X", 1.5, 0) }, 1.5, "X must be a non-negative number"},
		{"custom parser", " 8080 ", func(r *env.Reader) any {
			return env.Parse(r, "X", 0, "a port number", strconv.Itoa, strconv.Atoi)
		}, 8080, ""},
		{"custom parser refuses", "http", func(r *env.Reader) any {
			return env.Parse(r, "X", 0, "a port number", strconv.Itoa, strconv.Atoi)
		}, 0, `X must be a port number, not "http"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := env.Map(map[string]string{"X": tt.value})
			if got := tt.read(r); got != tt.want {
				t.Errorf("got %v (%T), want %v (%T)", got, got, tt.want, tt.want)
			}
			err := r.Err()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			var pe *env.ParseError
			if !errors.As(err, &pe) || pe.Name != "X" || pe.Value != strings.TrimSpace(tt.value) {
				t.Fatalf("error %#v is not a *ParseError naming X with the trimmed value", err)
			}
		})
	}
}

func TestRangeErrorsWrapErrRange(t *testing.T) {
	r := env.Map(map[string]string{"N": "0", "D": "-1s"})
	r.Int("N", 1, 1)
	r.Duration("D", time.Second, 0)
	if err := r.Err(); !errors.Is(err, env.ErrRange) {
		t.Fatalf("error %v does not wrap ErrRange", err)
	}
	bad := env.Map(map[string]string{"N": "x"})
	bad.Int("N", 1, 1)
	if err := bad.Err(); err == nil || errors.Is(err, env.ErrRange) {
		t.Fatalf("a value that does not parse is not a range error: %v", err)
	}
}

// Every error is reported, not only the first, and errors the caller adds
// with Fail come out of Err with them.
func TestReaderCollectsEveryError(t *testing.T) {
	r := env.Map(map[string]string{"A": "x", "B": "y"})
	r.Int("A", 1, 1)
	r.Duration("B", time.Second, time.Nanosecond)
	r.Fail(errors.New("A and B disagree"))
	err := r.Err()
	for _, want := range []string{"A must be", "B must be", "A and B disagree"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v, want it to contain %q", err, want)
		}
	}
}

func TestPrefix(t *testing.T) {
	r := env.Map(map[string]string{"ROLLUP_N": "oops", "N": "3"})
	p := r.WithPrefix("ROLLUP_")
	p.Int("N", 1, 1)
	var pe *env.ParseError
	if err := p.Err(); !errors.As(err, &pe) || pe.Name != "ROLLUP_N" {
		t.Fatalf("error %v, want a ParseError naming ROLLUP_N", err)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("the parent reports the derived reader's error %v", err)
	}
	if got := r.Vars(); len(got) != 1 || got[0].Name != "ROLLUP_N" {
		t.Fatalf("vars %v, want ROLLUP_N recorded on the parent too", got)
	}
	if p.Platform("N") != "3" {
		t.Fatal("Platform must not prefix")
	}
}

func TestVarsRecordsDefaultsOnce(t *testing.T) {
	r := env.Map(nil)
	r.String("S", "")
	r.Int("I", 4<<20, 1)
	r.Duration("D", 30*time.Minute, time.Nanosecond)
	r.Duration("D", 30*time.Minute, time.Nanosecond)
	r.Bool("B", false)
	r.Float("F", 0.05, 0)
	want := []env.Var{{"S", ""}, {"I", "4194304"}, {"D", "30m"}, {"B", "false"}, {"F", "0.05"}}
	got := r.Vars()
	if len(got) != len(want) {
		t.Fatalf("vars %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("vars %v, want %v", got, want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{5 * time.Millisecond, "5ms"}, {20 * time.Second, "20s"}, {30 * time.Minute, "30m"},
		{time.Hour, "1h"}, {72 * time.Hour, "72h"}, {90 * time.Minute, "1h30m"}, {61 * time.Second, "1m1s"},
	} {
		t.Run(tt.want, func(t *testing.T) {
			if got := env.FormatDuration(tt.d); got != tt.want {
				t.Fatalf("FormatDuration(%v) = %q, want %q", tt.d, got, tt.want)
			}
			if d, err := time.ParseDuration(tt.want); err != nil || d != tt.d {
				t.Fatalf("%q does not parse back to %v", tt.want, tt.d)
			}
		})
	}
}
