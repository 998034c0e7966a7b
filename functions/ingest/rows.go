package ingest

import (
	"encoding/json"
	"net/netip"
	"time"
)

// stageColumns are the columns ingest writes, in COPY order. ingested_at
// takes its default.
var stageColumns = []string{
	"received_at", "message_id", "tenant", "organization", "environment", "apiproxy",
	"apiproxy_revision", "proxy_basepath", "request_verb", "request_path",
	"response_status_code", "target_response_code", "total_response_time", "target_response_time",
	"request_size", "response_size", "client_ip", "useragent", "target_host", "fault_name", "is_error",
	"developer_app", "developer_email", "api_product", "client_id",
	"identity_subject", "identity_issuer", "identity_email", "identity_auth", "identity_scopes",
	"attributes", "extra", "pubsub_message_id", "publish_time", "batch_id",
}

// The staging table is declared column by column (not LIKE apigee.api_calls)
// because the ingest role may not read the raw table's definition-bearing
// columns. ON COMMIT DELETE ROWS empties it after every batch.
const createStageSQL = `CREATE TEMP TABLE IF NOT EXISTS apigee_stage_calls (
	received_at timestamptz, message_id text, tenant text, organization text, environment text, apiproxy text,
	apiproxy_revision integer, proxy_basepath text, request_verb text, request_path text,
	response_status_code smallint, target_response_code smallint, total_response_time integer, target_response_time integer,
	request_size bigint, response_size bigint, client_ip inet, useragent text, target_host text, fault_name text, is_error boolean,
	developer_app text, developer_email text, api_product text, client_id text,
	identity_subject text, identity_issuer text, identity_email text, identity_auth text, identity_scopes text[],
	attributes jsonb, extra jsonb, pubsub_message_id text, publish_time timestamptz, batch_id bigint
) ON COMMIT DELETE ROWS`

// moveSQL inserts the staged rows that are new, records the minutes they
// touched for functions/rollup, and returns their keys. Duplicates within
// the batch or already stored are skipped by ON CONFLICT DO NOTHING.
// Rows go in key order so that two batches holding the same redelivered
// messages wait on each other in one order and cannot deadlock.
var moveSQL = `
WITH ins AS (
	INSERT INTO apigee.api_calls (` + columnList + `)
	SELECT ` + columnList + ` FROM apigee_stage_calls
	ORDER BY message_id, received_at
	ON CONFLICT DO NOTHING
	RETURNING message_id, received_at
), inv AS (
	INSERT INTO apigee.rollup_invalidations (batch_id, bucket_start)
	SELECT DISTINCT $1::bigint, date_trunc('minute', received_at) FROM ins
)
SELECT message_id, received_at FROM ins`

var columnList = func() string {
	s := ""
	for i, c := range stageColumns {
		if i > 0 {
			s += ", "
		}
		s += c
	}
	return s
}()

// insertRejectsSQL takes one array per column ($1–$13) and the batch id ($14).
const insertRejectsSQL = `
INSERT INTO apigee.ingest_rejects (received_at, dedupe_key, tenant, reason, field, detail, record_index,
	payload, payload_sha256, pubsub_message_id, subscription, publish_time, attributes, batch_id)
SELECT r.*, $14::bigint FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
	$7::integer[], $8::bytea[], $9::bytea[], $10::text[], $11::text[], $12::timestamptz[], $13::jsonb[]) AS r
ON CONFLICT DO NOTHING`

// callRows feeds calls to CopyFrom without building [][]any up front.
type callRows struct {
	calls   []Call
	batchID int64
	i       int
	row     []any
}

func (c *callRows) Next() bool {
	c.i++
	return c.i <= len(c.calls)
}

func (c *callRows) Err() error { return nil }

func (c *callRows) Values() ([]any, error) {
	r := &c.calls[c.i-1]
	if c.row == nil {
		c.row = make([]any, len(stageColumns))
	}
	v := c.row
	v[0] = r.ReceivedAt
	v[1] = r.MessageID
	v[2] = r.Tenant
	v[3] = r.Organization
	v[4] = r.Environment
	v[5] = r.APIProxy
	v[6] = r.APIProxyRevision
	v[7] = nullString(r.ProxyBasepath)
	v[8] = r.RequestVerb
	v[9] = r.RequestPath
	v[10] = r.ResponseStatusCode
	v[11] = r.TargetResponseCode
	v[12] = r.TotalResponseTime
	v[13] = r.TargetResponseTime
	v[14] = r.RequestSize
	v[15] = r.ResponseSize
	v[16] = nullAddr(r.ClientIP)
	v[17] = nullString(r.UserAgent)
	v[18] = nullString(r.TargetHost)
	v[19] = nullString(r.FaultName)
	v[20] = r.IsError
	v[21] = nullString(r.DeveloperApp)
	v[22] = nullString(r.DeveloperEmail)
	v[23] = nullString(r.APIProduct)
	v[24] = nullString(r.ClientID)
	v[25] = nullString(r.Identity.Subject)
	v[26] = nullString(r.Identity.Issuer)
	v[27] = nullString(r.Identity.Email)
	v[28] = nullString(r.Identity.Auth)
	v[29] = nullStrings(r.Identity.Scopes)
	v[30] = jsonAttributes(r.Attributes)
	v[31] = jsonExtra(r.Extra)
	v[32] = nullString(r.PubSubMessageID)
	v[33] = nullTime(r.PublishTime)
	v[34] = c.batchID
	return v, nil
}

// rejectColumns turns rejects into the 13 column arrays of insertRejectsSQL.
func rejectColumns(rs []Reject) []any {
	n := len(rs)
	var (
		at      = make([]time.Time, n)
		key     = make([]string, n)
		tenant  = make([]string, n)
		reason  = make([]string, n)
		field   = make([]*string, n)
		detail  = make([]string, n)
		index   = make([]int32, n)
		payload = make([][]byte, n)
		sum     = make([][]byte, n)
		msgID   = make([]*string, n)
		sub     = make([]*string, n)
		pub     = make([]*time.Time, n)
		attrs   = make([][]byte, n)
	)
	for i := range rs {
		r := &rs[i]
		at[i] = r.ReceivedAt
		key[i] = r.DedupeKey
		tenant[i] = r.Tenant
		reason[i] = r.Reason
		field[i] = nullString(r.Field)
		detail[i] = r.Detail
		index[i] = int32(r.RecordIndex)
		payload[i] = r.Payload
		if payload[i] == nil {
			payload[i] = []byte{}
		}
		h := sha256Sum(r.Payload)
		sum[i] = h[:]
		msgID[i] = nullString(r.PubSubMessageID)
		sub[i] = nullString(r.Subscription)
		pub[i] = nullTime(r.PublishTime)
		attrs[i] = jsonAttributes(r.Attributes)
	}
	return []any{at, key, tenant, reason, field, detail, index, payload, sum, msgID, sub, pub, attrs}
}

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func nullStrings(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func nullAddr(a netip.Addr) any {
	if !a.IsValid() {
		return nil
	}
	return a
}

func jsonAttributes(m map[string]string) []byte {
	if len(m) == 0 {
		return nil
	}
	b, _ := json.Marshal(m) // a map of strings always marshals
	return b
}

func jsonExtra(m map[string]json.RawMessage) []byte {
	if len(m) == 0 {
		return nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		// Extra holds raw JSON the decoder validated; a failure here is a bug,
		// but losing the extra fields beats losing the row.
		return nil
	}
	return b
}
