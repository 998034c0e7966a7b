package ingest

import (
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"apigee-timescale/shared/env"
	"apigee-timescale/shared/privacy"
	"apigee-timescale/shared/record"
)

// Environment variables read by ConfigFrom (besides shared/dbconn's), each
// with its default: the one place they are declared (the README's table is
// checked against them, and the batcher's own zero-value defaults should be
// these).
const (
	EnvPushAudience       = "PUSH_AUDIENCE"
	EnvPushServiceAccount = "PUSH_SERVICE_ACCOUNT"

	EnvBatchMaxRows      = "INGEST_BATCH_MAX_ROWS"
	DefaultBatchMaxRows  = 1000
	EnvBatchMaxBytes     = "INGEST_BATCH_MAX_BYTES"
	DefaultBatchMaxBytes = 4 << 20
	EnvBatchMaxWait      = "INGEST_BATCH_MAX_WAIT"
	DefaultBatchMaxWait  = 5 * time.Millisecond
	EnvQueueMaxRows      = "INGEST_QUEUE_MAX_ROWS"
	DefaultQueueMaxRows  = 20000
	EnvQueueMaxBytes     = "INGEST_QUEUE_MAX_BYTES"
	DefaultQueueMaxBytes = 64 << 20
	EnvFlushers          = "INGEST_FLUSHERS"
	DefaultFlushers      = 2
	EnvWriteTimeout      = "INGEST_WRITE_TIMEOUT"
	DefaultWriteTimeout  = 20 * time.Second

	EnvRequestTimeout     = "INGEST_REQUEST_TIMEOUT"
	DefaultRequestTimeout = 9 * time.Second
	EnvMaxBodyBytes       = "INGEST_MAX_BODY_BYTES"
	DefaultMaxBodyBytes   = 16 << 20
	EnvMaxFuture          = "INGEST_MAX_FUTURE"
	DefaultMaxFuture      = time.Hour
	EnvDrainTimeout       = "INGEST_DRAIN_TIMEOUT"
	DefaultDrainTimeout   = 8 * time.Second

	EnvGCPercent       = "INGEST_GC_PERCENT"
	DefaultGCPercent   = 150
	EnvMemoryLimit     = "INGEST_MEMORY_LIMIT"
	DefaultMemoryLimit = 0
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

	// Batch: group commit limits (INGEST_BATCH_MAX_ROWS,
	// INGEST_BATCH_MAX_BYTES, INGEST_BATCH_MAX_WAIT, INGEST_QUEUE_MAX_ROWS,
	// INGEST_QUEUE_MAX_BYTES, INGEST_FLUSHERS, INGEST_WRITE_TIMEOUT; the
	// Default* constants above).
	Batch BatchConfig

	// RequestTimeout (INGEST_REQUEST_TIMEOUT): a delivery not committed by
	// then is answered 503 (Pub/Sub redelivers; writes are idempotent).
	// Keep it under the subscription's ack deadline (10 s by default).
	RequestTimeout time.Duration
	// MaxBodyBytes (INGEST_MAX_BODY_BYTES): larger deliveries are
	// quarantined unread. Pub/Sub's own limit is 10 MB of data, about
	// 13.4 MB once base64-encoded in an envelope.
	MaxBodyBytes int
	// MaxFuture (INGEST_MAX_FUTURE): records whose received_at is further
	// in the future are rejected (a gateway clock gone wrong would
	// otherwise create far-future chunks).
	MaxFuture time.Duration
	// DrainTimeout (INGEST_DRAIN_TIMEOUT): on SIGTERM, how long in-flight
	// batches may take to commit. Cloud Run allows 10 s.
	DrainTimeout time.Duration

	// GCPercent (INGEST_GC_PERCENT) is the garbage collector's GOGC: the
	// heap may grow this many percent over what is live before a
	// collection. 150 rather than Go's 100: on 500-record messages the
	// function spent 8–14 % less CPU per delivery, for a peak RSS of
	// about 55 MiB instead of 50 (bench-ingest -only 1b,2,3 under
	// GOGC=100/150/200). What is live stays bounded by
	// INGEST_QUEUE_MAX_BYTES, the queue of accepted input.
	GCPercent int
	// MemoryLimit (INGEST_MEMORY_LIMIT, bytes; 0: none) is the Go
	// runtime's soft memory limit: near it the collector runs as often
	// as it must, whatever GCPercent says. Set it to about three quarters
	// of the instance's memory when giving the function less than the
	// deployed 1 GiB.
	MemoryLimit int
	// goGC and goMemLimit: the Go runtime's own GOGC and GOMEMLIMIT are
	// set, which it applied before main and which TuneGC leaves alone.
	goGC, goMemLimit bool

	// Privacy: what happens to the personal fields before they are
	// hashed and stored, and the key of their pseudonyms (INGEST_PRIVACY,
	// INGEST_PRIVACY_KEY_SECRET, INGEST_PRIVACY_KEY,
	// INGEST_PRIVACY_IPV4_PREFIX, INGEST_PRIVACY_IPV6_PREFIX; declared
	// with their defaults in shared/privacy, which the pseudonym command
	// reads too).
	Privacy privacy.Config
}

// Limits returns the record validator's limits under this configuration.
func (c Config) Limits() record.Limits {
	l := record.DefaultLimits()
	l.MaxFuture = c.MaxFuture
	return l
}

// TuneGC applies GCPercent and MemoryLimit to the Go runtime, each unless
// the runtime's own variable (GOGC, GOMEMLIMIT) is set. It changes the
// whole process, so only the function's start calls it, not NewService.
func (c Config) TuneGC() {
	if !c.goGC {
		debug.SetGCPercent(c.GCPercent)
	}
	if c.MemoryLimit > 0 && !c.goMemLimit {
		debug.SetMemoryLimit(int64(c.MemoryLimit))
	}
}

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
	c := Config{
		PushAudience:       r.String(EnvPushAudience, ""),
		PushServiceAccount: r.String(EnvPushServiceAccount, ""),
		Batch: BatchConfig{
			MaxRows:      r.Int(EnvBatchMaxRows, DefaultBatchMaxRows, 1),
			MaxBytes:     r.Int(EnvBatchMaxBytes, DefaultBatchMaxBytes, 1),
			MaxWait:      r.Duration(EnvBatchMaxWait, DefaultBatchMaxWait, positive),
			QueueRows:    r.Int(EnvQueueMaxRows, DefaultQueueMaxRows, 1),
			QueueBytes:   r.Int(EnvQueueMaxBytes, DefaultQueueMaxBytes, 1),
			Flushers:     r.Int(EnvFlushers, DefaultFlushers, 1),
			WriteTimeout: r.Duration(EnvWriteTimeout, DefaultWriteTimeout, positive),
		},
		RequestTimeout: r.Duration(EnvRequestTimeout, DefaultRequestTimeout, positive),
		MaxBodyBytes:   r.Int(EnvMaxBodyBytes, DefaultMaxBodyBytes, 1),
		MaxFuture:      r.Duration(EnvMaxFuture, DefaultMaxFuture, positive),
		DrainTimeout:   r.Duration(EnvDrainTimeout, DefaultDrainTimeout, positive),
		GCPercent:      r.Int(EnvGCPercent, DefaultGCPercent, 10),
		MemoryLimit:    r.Int(EnvMemoryLimit, DefaultMemoryLimit, 0),
		goGC:           r.Platform("GOGC") != "",
		goMemLimit:     r.Platform("GOMEMLIMIT") != "",
		Privacy:        privacy.ConfigFrom(r),
	}
	if c.PushServiceAccount != "" && c.PushAudience == "" {
		r.Fail(fmt.Errorf("%s is set but %s is not: verification needs the audience", EnvPushServiceAccount, EnvPushAudience))
	}
	if c.Batch.QueueRows < c.Batch.MaxRows {
		r.Fail(fmt.Errorf("%s (%d) must be at least %s (%d)", EnvQueueMaxRows, c.Batch.QueueRows, EnvBatchMaxRows, c.Batch.MaxRows))
	}
	if err := r.Err(); err != nil {
		return Config{}, fmt.Errorf("ingest config: %w", err)
	}
	return c, nil
}
