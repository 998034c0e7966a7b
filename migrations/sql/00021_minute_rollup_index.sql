-- The wide minute rollup's indexes, cut to what a query needs (issue 13).
-- At production density apigee.api_calls_1m holds 40 % as many rows as the
-- raw table, and maintaining its two indexes was most of a refresh's
-- insert cost:
--   * api_calls_1m_key, UNIQUE NULLS NOT DISTINCT over the bucket and all
--     eight text dimensions: no query looks a row up by all nine columns.
--     What it guarded, one row per group and bucket, is how functions/rollup
--     writes (it deletes a bucket's rows and inserts each group once, in one
--     transaction under the rollup's advisory lock, its groups keyed by all
--     nine columns in memory). Every refresh test compares each rollup
--     table with a direct GROUP BY of the raw rows by EXCEPT ALL both ways,
--     so a group written twice fails it (after late data, re-runs,
--     redelivered invalidations and concurrent invocations).
--     Replaced by an index on bucket_start alone: the refresh's DELETE, the
--     time-range reads of the views and ad-hoc queries, and retention need
--     nothing more.
--   * api_calls_1m_proxy_idx (tenant, apiproxy, bucket_start DESC): the
--     dashboards' per-proxy questions read apigee.proxy_calls_1m (00019),
--     whose own index is the same; a per-proxy question on the wide table
--     reads a time range through api_calls_1m_bucket_idx.
-- The hour table keeps both (a 60th of the rows; the reader sync's tenant
-- check reads api_calls_1h by tenant).
--
-- On an existing installation the CREATE INDEX reads the whole minute
-- table while holding a SHARE lock (refreshes wait; reads do not).

-- +goose Up
ALTER TABLE apigee.api_calls_1m DROP CONSTRAINT api_calls_1m_key;
DROP INDEX apigee.api_calls_1m_proxy_idx;
CREATE INDEX api_calls_1m_bucket_idx ON apigee.api_calls_1m (bucket_start);

-- +goose Down
DROP INDEX apigee.api_calls_1m_bucket_idx;
CREATE INDEX api_calls_1m_proxy_idx ON apigee.api_calls_1m (tenant, apiproxy, bucket_start DESC);
ALTER TABLE apigee.api_calls_1m ADD CONSTRAINT api_calls_1m_key
    UNIQUE NULLS NOT DISTINCT (bucket_start, tenant, organization, environment, apiproxy, api_product, developer_app, request_verb, response_status_code);
