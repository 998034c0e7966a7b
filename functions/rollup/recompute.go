package rollup

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// recompute replaces the rollup rows of the claimed minutes and of their
// hours, run of contiguous hours by run, and returns the raw rows read
// into minute rows and the rollup rows written.
//
// One statement per run of hours (hourSQL) reads each hour's raw rows once
// and yields both its minute and hour groups, far cheaper than building
// hours by unnesting minute histograms; it writes minute rows only for the
// claimed minutes. The hours are whole: retention drops raw rows by day
// (raw_dropped_before is a day boundary) and invalidations before it are
// discarded first, so no recomputed hour is missing raw rows.
func recompute(ctx context.Context, tx pgx.Tx, minutes, hours []time.Time) (rowsRead, written int64, err error) {
	for _, rg := range runs(minutes, time.Minute) {
		for _, table := range []string{"api_calls_1m", "proxy_calls_1m"} {
			if _, err := tx.Exec(ctx, "DELETE FROM apigee."+table+" WHERE bucket_start >= $1 AND bucket_start < $2", rg.from, rg.to); err != nil {
				return 0, 0, fmt.Errorf("clear minutes: %w", err)
			}
		}
	}
	for _, rg := range runs(hours, time.Hour) {
		for _, table := range []string{"api_calls_1h", "proxy_calls_1h"} {
			if _, err := tx.Exec(ctx, "DELETE FROM apigee."+table+" WHERE bucket_start >= $1 AND bucket_start < $2", rg.from, rg.to); err != nil {
				return 0, 0, fmt.Errorf("clear hours: %w", err)
			}
		}
		var m, h, n, calls int64
		if err := tx.QueryRow(ctx, hourSQL, rg.from, rg.to, minutes).Scan(&m, &h, &n, &calls); err != nil {
			return 0, 0, fmt.Errorf("recompute %s–%s: %w", rg.from.Format(time.RFC3339), rg.to.Format(time.RFC3339), err)
		}
		written += m + h + n
		rowsRead += calls
	}
	return rowsRead, written, nil
}

const dims = `tenant, organization, environment, apiproxy, api_product, developer_app, request_verb, response_status_code`

// proxyDims are the dimensions of the narrow dashboard rollups
// (proxy_calls_1m/1h, migration 00019).
const proxyDims = `tenant, organization, environment, apiproxy`

const proxyCols = `bucket_start, ` + proxyDims + `,
	calls, errors, status_2xx, status_3xx, status_4xx, status_5xx, request_bytes, response_bytes,
	total_ms_count, total_ms_sum, total_ms_min, total_ms_max, total_ms_hist,
	target_ms_count, target_ms_sum, target_ms_min, target_ms_max, target_ms_hist`

const proxyVals = proxyDims + `, calls, errors, s2xx, s3xx, client_errors, s5xx, request_bytes, response_bytes,
	total_ms_count, total_ms_sum, total_ms_min, total_ms_max, apigee.latency_hist_rle(tb),
	target_ms_count, target_ms_sum, target_ms_min, target_ms_max, apigee.latency_hist_rle(gb)`

const rollupCols = `bucket_start, ` + dims + `,
	calls, errors, client_errors, request_bytes, response_bytes,
	total_ms_count, total_ms_sum, total_ms_min, total_ms_max, total_ms_hist,
	target_ms_count, target_ms_sum, target_ms_min, target_ms_max, target_ms_hist`

// hourSQL recomputes the hour rows of [$1, $2), and the minute rows of
// those of its minutes in $3, from the raw rows in one sort: GROUP BY hour, the dimensions, ROLLUP (minute)
// is a single chain of grouping sets, so PostgreSQL sorts the rows once
// and emits each minute group and, after its last minute, the hour group.
// Each group collects its latency bins sorted (array_agg ORDER BY, a
// per-group sort like percentile_cont's); a minute row stores them as
// they are, one count per call (bins sorted, repeats allowed: minute
// groups hold a few calls each, so compacting them costs more than it
// saves), an hour row run-length encodes them (apigee.latency_hist_rle,
// migration 00018). The text dimensions sort under COLLATE "C": groups are
// the same (equality is byte equality either way) but comparisons are
// memcmp with abbreviated keys instead of the database locale's strcoll.
//
// The narrow per-proxy rows (proxy_calls_1m/1h) are a second chain of
// grouping sets in the same GROUP BY: PostgreSQL sorts the rows a second
// time by hour, proxy, minute, which is cheaper than merging the wide
// minute rows' histograms (about as many as the raw rows at production
// density) and exact the same way. Both narrow levels are run-length
// encoded: a narrow minute holds every call of its proxy.
const hourSQL = `
WITH g AS (
	SELECT hour, minute, ` + dims + `, GROUPING(minute) AS is_hour, GROUPING(request_verb) AS is_proxy,
		count(*) AS calls,
		count(*) FILTER (WHERE err) AS errors,
		count(*) FILTER (WHERE cerr) AS client_errors,
		count(*) FILTER (WHERE response_status_code BETWEEN 200 AND 299) AS s2xx,
		count(*) FILTER (WHERE response_status_code BETWEEN 300 AND 399) AS s3xx,
		count(*) FILTER (WHERE response_status_code BETWEEN 500 AND 599) AS s5xx,
		coalesce(sum(request_size), 0)::bigint AS request_bytes,
		coalesce(sum(response_size), 0)::bigint AS response_bytes,
		count(total_response_time) AS total_ms_count,
		coalesce(sum(total_response_time), 0)::bigint AS total_ms_sum,
		min(total_response_time) AS total_ms_min,
		max(total_response_time) AS total_ms_max,
		array_agg(tbin ORDER BY tbin) FILTER (WHERE tbin IS NOT NULL) AS tb,
		count(target_response_time) AS target_ms_count,
		coalesce(sum(target_response_time), 0)::bigint AS target_ms_sum,
		min(target_response_time) AS target_ms_min,
		max(target_response_time) AS target_ms_max,
		array_agg(gbin ORDER BY gbin) FILTER (WHERE gbin IS NOT NULL) AS gb
	FROM (
		SELECT date_bin('1 hour', received_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
			date_bin('1 minute', received_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS minute,
			tenant COLLATE "C" AS tenant, organization COLLATE "C" AS organization, environment COLLATE "C" AS environment,
			apiproxy COLLATE "C" AS apiproxy, api_product COLLATE "C" AS api_product, developer_app COLLATE "C" AS developer_app,
			request_verb COLLATE "C" AS request_verb, response_status_code,
			apigee.latency_hist_bin(total_response_time) AS tbin,
			apigee.latency_hist_bin(target_response_time) AS gbin,
			(coalesce(is_error, false) OR response_status_code >= 500) AS err,
			(response_status_code BETWEEN 400 AND 499) AS cerr,
			request_size, response_size, total_response_time, target_response_time
		FROM apigee.api_calls
		WHERE received_at >= $1 AND received_at < $2
	) r
	GROUP BY hour, GROUPING SETS ((` + dims + `, minute), (` + dims + `), (` + proxyDims + `, minute), (` + proxyDims + `))
), m AS (
	INSERT INTO apigee.api_calls_1m (` + rollupCols + `)
	SELECT minute, ` + dims + `, calls, errors, client_errors, request_bytes, response_bytes,
		total_ms_count, total_ms_sum, total_ms_min, total_ms_max,
		ROW(coalesce(tb, '{}'), array_fill(1::bigint, ARRAY[coalesce(cardinality(tb), 0)]))::apigee.latency_hist,
		target_ms_count, target_ms_sum, target_ms_min, target_ms_max,
		ROW(coalesce(gb, '{}'), array_fill(1::bigint, ARRAY[coalesce(cardinality(gb), 0)]))::apigee.latency_hist
	FROM g WHERE is_proxy = 0 AND is_hour = 0 AND minute = ANY ($3::timestamptz[])
	RETURNING calls
), h AS (
	INSERT INTO apigee.api_calls_1h (` + rollupCols + `)
	SELECT hour, ` + dims + `, calls, errors, client_errors, request_bytes, response_bytes,
		total_ms_count, total_ms_sum, total_ms_min, total_ms_max, apigee.latency_hist_rle(tb),
		target_ms_count, target_ms_sum, target_ms_min, target_ms_max, apigee.latency_hist_rle(gb)
	FROM g WHERE is_proxy = 0 AND is_hour = 1
	RETURNING 1
), pm AS (
	INSERT INTO apigee.proxy_calls_1m (` + proxyCols + `)
	SELECT minute, ` + proxyVals + `
	FROM g WHERE is_proxy = 1 AND is_hour = 0 AND minute = ANY ($3::timestamptz[])
	RETURNING 1
), ph AS (
	INSERT INTO apigee.proxy_calls_1h (` + proxyCols + `)
	SELECT hour, ` + proxyVals + `
	FROM g WHERE is_proxy = 1 AND is_hour = 1
	RETURNING 1
)
SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM h), (SELECT count(*) FROM pm) + (SELECT count(*) FROM ph),
	(SELECT coalesce(sum(calls), 0)::bigint FROM m)`
