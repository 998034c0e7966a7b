// Package env is the one way the functions read their configuration from
// environment variables: every value is trimmed of surrounding white space,
// an empty value means the variable is unset and takes its default, and a
// value that does not parse is a *ParseError naming the variable.
//
// A Reader collects every error instead of stopping at the first, so a
// misconfigured function reports all its mistakes at once, and it records
// each variable it was asked for with its default (Vars), which is how the
// README's configuration tables are checked against the code.
package env

import (
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrRange is wrapped by a ParseError whose value parsed but is out of the
// variable's range.
var ErrRange = errors.New("out of range")

// ParseError is a variable whose value is not of its type or range.
type ParseError struct {
	Name  string // the variable, prefix included
	Value string // trimmed
	Want  string // what the value must be, e.g. "a positive duration such as 5ms"
	Err   error  // the parser's error, or ErrRange
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("%s must be %s, not %q", e.Name, e.Want, e.Value)
}

func (e *ParseError) Unwrap() error { return e.Err }

// Var is one variable a Reader was asked for.
type Var struct {
	Name    string // prefix included
	Default string // as the README writes it; "" for none
}

// Reader reads variables through a lookup function (os.Getenv in
// production, a map in tests).
type Reader struct {
	getenv func(string) string
	prefix string
	errs   []error
	// vars is shared with the Readers derived from this one, so that one
	// record lists every variable a configuration reads.
	vars *[]Var
}

// New returns a Reader over getenv.
func New(getenv func(string) string) *Reader {
	return &Reader{getenv: getenv, vars: new([]Var)}
}

// Map returns a Reader over m, for tests.
func Map(m map[string]string) *Reader {
	return New(func(k string) string { return m[k] })
}

// WithPrefix returns a Reader that prepends prefix to every name (e.g.
// "ROLLUP_" reads ROLLUP_DATABASE_URL). It has errors of its own, so that
// another package's configuration can be read and reported apart, and
// shares r's record of variables (Vars).
func (r *Reader) WithPrefix(prefix string) *Reader {
	return &Reader{getenv: r.getenv, prefix: r.prefix + prefix, vars: r.vars}
}

// Prefix is the prefix prepended to names.
func (r *Reader) Prefix() string { return r.prefix }

// Err joins every parse error seen so far, and errors added with Fail.
func (r *Reader) Err() error { return errors.Join(r.errs...) }

// Fail records a configuration error found by the caller (a relation
// between variables, say), so that Err reports it with the parse errors.
func (r *Reader) Fail(err error) {
	r.errs = append(r.errs, err)
}

// Vars lists the variables read so far through r and the Readers derived
// from it or it from, in order, each once.
func (r *Reader) Vars() []Var { return *r.vars }

// cloudRunService is K_SERVICE as the platform set it when the process
// started, read before shared/function's init clears the variable (see
// there for why).
var cloudRunService = strings.TrimSpace(os.Getenv("K_SERVICE"))

// CloudRunService is the name of the Cloud Run service the process runs
// as (https://cloud.google.com/run/docs/container-contract#env-vars), ""
// elsewhere. Read it here, not from the environment: shared/function
// clears K_SERVICE at start.
func CloudRunService() string { return cloudRunService }

// Platform reads a variable that belongs to the platform or the Go
// runtime (GOGC, say) rather than to the function's configuration:
// trimmed, never prefixed, not part of the documented configuration.
func (r *Reader) Platform(name string) string {
	return strings.TrimSpace(r.getenv(name))
}

// String reads a string variable.
func (r *Reader) String(name, def string) string {
	if v, ok := r.lookup(name, def); ok {
		return v
	}
	return def
}

// Int reads an integer of at least min.
func (r *Reader) Int(name string, def, min int) int {
	want := fmt.Sprintf("an integer of at least %d", min)
	return Parse(r, name, def, want, strconv.Itoa, func(s string) (int, error) {
		n, err := strconv.Atoi(s)
		if err == nil && n < min {
			err = ErrRange
		}
		return n, err
	})
}

// Duration reads a Go duration ("250ms", "1h30m") of at least min; min 0
// admits "0s", any larger min refuses it.
func (r *Reader) Duration(name string, def, min time.Duration) time.Duration {
	example := FormatDuration(def)
	if def <= 0 {
		example = "30s"
	}
	want := "a positive duration such as " + example
	switch {
	case min == 0:
		want = "a non-negative duration such as " + example
	case min > time.Nanosecond:
		want = fmt.Sprintf("a duration of at least %s", FormatDuration(min))
	}
	return Parse(r, name, def, want, FormatDuration, func(s string) (time.Duration, error) {
		d, err := time.ParseDuration(s)
		if err == nil && d < min {
			err = ErrRange
		}
		return d, err
	})
}

// Bool reads a boolean as strconv.ParseBool does (true, false, 1, 0, ...).
func (r *Reader) Bool(name string, def bool) bool {
	return Parse(r, name, def, "a boolean (true or false)", strconv.FormatBool, strconv.ParseBool)
}

// Float reads a finite number of at least min.
func (r *Reader) Float(name string, def, min float64) float64 {
	want := "a number of at least " + strconv.FormatFloat(min, 'g', -1, 64)
	if min == 0 {
		want = "a non-negative number"
	}
	format := func(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
	return Parse(r, name, def, want, format, func(s string) (float64, error) {
		f, err := strconv.ParseFloat(s, 64)
		if err == nil && (math.IsNaN(f) || math.IsInf(f, 0) || f < min) {
			err = ErrRange
		}
		return f, err
	})
}

// Parse reads a variable of any type: parse reads a set value, format
// writes the default as the README shows it, want says what a value must
// be. A value parse refuses is recorded as a *ParseError and def returned.
func Parse[T any](r *Reader, name string, def T, want string, format func(T) string, parse func(string) (T, error)) T {
	v, ok := r.lookup(name, format(def))
	if !ok {
		return def
	}
	x, err := parse(v)
	if err != nil {
		r.Fail(&ParseError{Name: r.prefix + name, Value: v, Want: want, Err: err})
		return def
	}
	return x
}

// FormatDuration writes d without the zero units time.Duration.String
// adds: 30m, not 30m0s; 1h30m, not 1h30m0s.
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// lookup records name with its default and returns its trimmed value,
// and whether it is set.
func (r *Reader) lookup(name, def string) (string, bool) {
	full := r.prefix + name
	if !slices.ContainsFunc(*r.vars, func(v Var) bool { return v.Name == full }) {
		*r.vars = append(*r.vars, Var{Name: full, Default: def})
	}
	v := strings.TrimSpace(r.getenv(full))
	return v, v != ""
}
