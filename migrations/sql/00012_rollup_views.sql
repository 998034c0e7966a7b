-- Views for people and dashboards, per API proxy (tenant, organization,
-- environment, apiproxy), with percentiles already computed from the merged
-- latency histograms (apigee.latency_hist_quantile over
-- apigee.latency_hist_merge): never an average of percentiles.
--
-- security_invoker: the caller's row-level security on the rollup tables
-- applies, so a reader sees only the tenants granted to it, exactly as on
-- apigee.api_calls. The policies' own barrier keeps callers' leaky
-- predicates from running on rows the policy hides.
--
-- Filter on bucket_start, tenant or apiproxy: those conditions reach the
-- rollup tables' indexes and chunk exclusion (for proxy_latency_1d only
-- tenant and apiproxy do; its bucket is computed).

-- +goose Up
-- Per proxy and minute.
CREATE VIEW apigee.proxy_latency_1m WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       calls, errors,
       total_ms_sum::float8 / nullif(total_ms_count, 0) AS total_ms_avg,
       apigee.latency_hist_quantile(total_ms_hist, 0.50) AS total_ms_p50,
       apigee.latency_hist_quantile(total_ms_hist, 0.90) AS total_ms_p90,
       apigee.latency_hist_quantile(total_ms_hist, 0.95) AS total_ms_p95,
       apigee.latency_hist_quantile(total_ms_hist, 0.99) AS total_ms_p99,
       total_ms_max,
       target_ms_sum::float8 / nullif(target_ms_count, 0) AS target_ms_avg,
       apigee.latency_hist_quantile(target_ms_hist, 0.50) AS target_ms_p50,
       apigee.latency_hist_quantile(target_ms_hist, 0.90) AS target_ms_p90,
       apigee.latency_hist_quantile(target_ms_hist, 0.95) AS target_ms_p95,
       apigee.latency_hist_quantile(target_ms_hist, 0.99) AS target_ms_p99,
       target_ms_max,
       total_ms_hist, target_ms_hist
FROM (
    SELECT bucket_start, tenant, organization, environment, apiproxy,
           sum(calls)::bigint AS calls, sum(errors)::bigint AS errors,
           sum(total_ms_count)::bigint AS total_ms_count, sum(total_ms_sum)::bigint AS total_ms_sum,
           max(total_ms_max) AS total_ms_max, apigee.latency_hist_merge(total_ms_hist) AS total_ms_hist,
           sum(target_ms_count)::bigint AS target_ms_count, sum(target_ms_sum)::bigint AS target_ms_sum,
           max(target_ms_max) AS target_ms_max, apigee.latency_hist_merge(target_ms_hist) AS target_ms_hist
    FROM apigee.api_calls_1m
    GROUP BY 1, tenant, organization, environment, apiproxy
) s;

-- Per proxy and hour.
CREATE VIEW apigee.proxy_latency_1h WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       calls, errors,
       total_ms_sum::float8 / nullif(total_ms_count, 0) AS total_ms_avg,
       apigee.latency_hist_quantile(total_ms_hist, 0.50) AS total_ms_p50,
       apigee.latency_hist_quantile(total_ms_hist, 0.90) AS total_ms_p90,
       apigee.latency_hist_quantile(total_ms_hist, 0.95) AS total_ms_p95,
       apigee.latency_hist_quantile(total_ms_hist, 0.99) AS total_ms_p99,
       total_ms_max,
       target_ms_sum::float8 / nullif(target_ms_count, 0) AS target_ms_avg,
       apigee.latency_hist_quantile(target_ms_hist, 0.50) AS target_ms_p50,
       apigee.latency_hist_quantile(target_ms_hist, 0.90) AS target_ms_p90,
       apigee.latency_hist_quantile(target_ms_hist, 0.95) AS target_ms_p95,
       apigee.latency_hist_quantile(target_ms_hist, 0.99) AS target_ms_p99,
       target_ms_max,
       total_ms_hist, target_ms_hist
FROM (
    SELECT bucket_start, tenant, organization, environment, apiproxy,
           sum(calls)::bigint AS calls, sum(errors)::bigint AS errors,
           sum(total_ms_count)::bigint AS total_ms_count, sum(total_ms_sum)::bigint AS total_ms_sum,
           max(total_ms_max) AS total_ms_max, apigee.latency_hist_merge(total_ms_hist) AS total_ms_hist,
           sum(target_ms_count)::bigint AS target_ms_count, sum(target_ms_sum)::bigint AS target_ms_sum,
           max(target_ms_max) AS target_ms_max, apigee.latency_hist_merge(target_ms_hist) AS target_ms_hist
    FROM apigee.api_calls_1h
    GROUP BY 1, tenant, organization, environment, apiproxy
) s;

-- Per proxy and UTC day, merged from the hourly rows.
CREATE VIEW apigee.proxy_latency_1d WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       calls, errors,
       total_ms_sum::float8 / nullif(total_ms_count, 0) AS total_ms_avg,
       apigee.latency_hist_quantile(total_ms_hist, 0.50) AS total_ms_p50,
       apigee.latency_hist_quantile(total_ms_hist, 0.90) AS total_ms_p90,
       apigee.latency_hist_quantile(total_ms_hist, 0.95) AS total_ms_p95,
       apigee.latency_hist_quantile(total_ms_hist, 0.99) AS total_ms_p99,
       total_ms_max,
       target_ms_sum::float8 / nullif(target_ms_count, 0) AS target_ms_avg,
       apigee.latency_hist_quantile(target_ms_hist, 0.50) AS target_ms_p50,
       apigee.latency_hist_quantile(target_ms_hist, 0.90) AS target_ms_p90,
       apigee.latency_hist_quantile(target_ms_hist, 0.95) AS target_ms_p95,
       apigee.latency_hist_quantile(target_ms_hist, 0.99) AS target_ms_p99,
       target_ms_max,
       total_ms_hist, target_ms_hist
FROM (
    SELECT date_trunc('day', bucket_start, 'UTC') AS bucket_start, tenant, organization, environment, apiproxy,
           sum(calls)::bigint AS calls, sum(errors)::bigint AS errors,
           sum(total_ms_count)::bigint AS total_ms_count, sum(total_ms_sum)::bigint AS total_ms_sum,
           max(total_ms_max) AS total_ms_max, apigee.latency_hist_merge(total_ms_hist) AS total_ms_hist,
           sum(target_ms_count)::bigint AS target_ms_count, sum(target_ms_sum)::bigint AS target_ms_sum,
           max(target_ms_max) AS target_ms_max, apigee.latency_hist_merge(target_ms_hist) AS target_ms_hist
    FROM apigee.api_calls_1h
    GROUP BY 1, tenant, organization, environment, apiproxy
) s;

-- Errors (is_error or status >= 500) and client errors (4xx) per proxy and minute.
CREATE VIEW apigee.error_rate_1m WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       sum(calls)::bigint AS calls,
       sum(errors)::bigint AS errors,
       sum(client_errors)::bigint AS client_errors,
       sum(errors)::float8 / nullif(sum(calls), 0) AS error_rate,
       sum(client_errors)::float8 / nullif(sum(calls), 0) AS client_error_rate
FROM apigee.api_calls_1m
GROUP BY bucket_start, tenant, organization, environment, apiproxy;

-- The same per proxy and hour.
CREATE VIEW apigee.error_rate_1h WITH (security_invoker = true) AS
SELECT bucket_start, tenant, organization, environment, apiproxy,
       sum(calls)::bigint AS calls,
       sum(errors)::bigint AS errors,
       sum(client_errors)::bigint AS client_errors,
       sum(errors)::float8 / nullif(sum(calls), 0) AS error_rate,
       sum(client_errors)::float8 / nullif(sum(calls), 0) AS client_error_rate
FROM apigee.api_calls_1h
GROUP BY bucket_start, tenant, organization, environment, apiproxy;

ALTER VIEW apigee.proxy_latency_1m OWNER TO apigee_owner;
ALTER VIEW apigee.proxy_latency_1h OWNER TO apigee_owner;
ALTER VIEW apigee.proxy_latency_1d OWNER TO apigee_owner;
ALTER VIEW apigee.error_rate_1m OWNER TO apigee_owner;
ALTER VIEW apigee.error_rate_1h OWNER TO apigee_owner;
REVOKE ALL ON apigee.proxy_latency_1m, apigee.proxy_latency_1h, apigee.proxy_latency_1d, apigee.error_rate_1m, apigee.error_rate_1h FROM PUBLIC;
GRANT SELECT ON apigee.proxy_latency_1m, apigee.proxy_latency_1h, apigee.proxy_latency_1d, apigee.error_rate_1m, apigee.error_rate_1h TO apigee_reader, apigee_rollup;

-- +goose Down
DROP VIEW IF EXISTS apigee.error_rate_1h;
DROP VIEW IF EXISTS apigee.error_rate_1m;
DROP VIEW IF EXISTS apigee.proxy_latency_1d;
DROP VIEW IF EXISTS apigee.proxy_latency_1h;
DROP VIEW IF EXISTS apigee.proxy_latency_1m;
