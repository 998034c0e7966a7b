package ingest

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"apigee-timescale/shared/record"
)

// Config is the ingest function's configuration, read from the environment
// once at start-up and validated at once.
type Config struct {
	// PushAudience (PUSH_AUDIENCE) turns on OIDC verification of every
	// request: the expected `aud` of the push subscription's token (by
	// default the push endpoint URL). Empty: verification is off, and a
	// warning says so at start-up.
	PushAudience string
	// PushServiceAccount (PUSH_SERVICE_ACCOUNT), optional: the only service
	// account email allowed to push.
	PushServiceAccount string

	// Batch (INGEST_BATCH_MAX_ROWS, INGEST_BATCH_MAX_BYTES,
	// INGEST_BATCH_MAX_WAIT, INGEST_QUEUE_MAX_ROWS, INGEST_QUEUE_MAX_BYTES,
	// INGEST_FLUSHERS, INGEST_WRITE_TIMEOUT): group commit limits; defaults
	// 1000 rows, 4 MiB, 5ms, 20000 rows, 64 MiB, 2 flushers, 20s.
	Batch BatchConfig

	// RequestTimeout (INGEST_REQUEST_TIMEOUT, default 9s): a delivery not
	// committed by then is answered 503 (Pub/Sub redelivers; writes are
	// idempotent). Keep it under the subscription's ack deadline (10 s by
	// default).
	RequestTimeout time.Duration
	// MaxBodyBytes (INGEST_MAX_BODY_BYTES, default 16 MiB): larger deliveries
	// are quarantined unread. Pub/Sub's own limit is 10 MB of data, about
	// 13.4 MB once base64-encoded in an envelope.
	MaxBodyBytes int
	// MaxFuture (INGEST_MAX_FUTURE, default 1h): records whose received_at
	// is further in the future are rejected (a gateway clock gone wrong
	// would otherwise create far-future chunks).
	MaxFuture time.Duration
	// DrainTimeout (INGEST_DRAIN_TIMEOUT, default 8s): on SIGTERM, how long
	// in-flight batches may take to commit. Cloud Run allows 10 s.
	DrainTimeout time.Duration
}

// Limits returns the record validator's limits under this configuration.
func (c Config) Limits() record.Limits {
	l := record.DefaultLimits()
	l.MaxFuture = c.MaxFuture
	return l
}

// ConfigFromEnv reads and validates the configuration.
func ConfigFromEnv() (Config, error) {
	return configFrom(os.Getenv)
}

func configFrom(getenv func(string) string) (Config, error) {
	c := Config{
		PushAudience:       getenv("PUSH_AUDIENCE"),
		PushServiceAccount: getenv("PUSH_SERVICE_ACCOUNT"),
	}
	var errs []error
	intVar := func(name string, dst *int, def int) {
		*dst = def
		if v := getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				errs = append(errs, fmt.Errorf("%s must be a positive integer, not %q", name, v))
				return
			}
			*dst = n
		}
	}
	durVar := func(name string, dst *time.Duration, def time.Duration) {
		*dst = def
		if v := getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				errs = append(errs, fmt.Errorf("%s must be a positive duration such as 250ms, not %q", name, v))
				return
			}
			*dst = d
		}
	}
	intVar("INGEST_BATCH_MAX_ROWS", &c.Batch.MaxRows, 1000)
	intVar("INGEST_BATCH_MAX_BYTES", &c.Batch.MaxBytes, 4<<20)
	durVar("INGEST_BATCH_MAX_WAIT", &c.Batch.MaxWait, 5*time.Millisecond)
	intVar("INGEST_QUEUE_MAX_ROWS", &c.Batch.QueueRows, 20000)
	intVar("INGEST_QUEUE_MAX_BYTES", &c.Batch.QueueBytes, 64<<20)
	intVar("INGEST_FLUSHERS", &c.Batch.Flushers, 2)
	durVar("INGEST_WRITE_TIMEOUT", &c.Batch.WriteTimeout, 20*time.Second)
	durVar("INGEST_REQUEST_TIMEOUT", &c.RequestTimeout, 9*time.Second)
	intVar("INGEST_MAX_BODY_BYTES", &c.MaxBodyBytes, 16<<20)
	durVar("INGEST_MAX_FUTURE", &c.MaxFuture, time.Hour)
	durVar("INGEST_DRAIN_TIMEOUT", &c.DrainTimeout, 8*time.Second)

	if c.PushServiceAccount != "" && c.PushAudience == "" {
		errs = append(errs, errors.New("PUSH_SERVICE_ACCOUNT is set but PUSH_AUDIENCE is not: verification needs the audience"))
	}
	if c.Batch.QueueRows < c.Batch.MaxRows {
		errs = append(errs, fmt.Errorf("INGEST_QUEUE_MAX_ROWS (%d) must be at least INGEST_BATCH_MAX_ROWS (%d)", c.Batch.QueueRows, c.Batch.MaxRows))
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("ingest config: %w", errors.Join(errs...))
	}
	return c, nil
}
