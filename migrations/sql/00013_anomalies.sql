-- Minutes in which an API proxy's error rate or p95 latency departed from
-- its own recent baseline, as flagged by functions/rollup: one row per
-- (proxy, metric, minute), so re-evaluating a minute never flags it twice.
--
-- observed is the minute's value; baseline the median over the trailing
-- window; scale the robust spread used (1.4826 × MAD, with floors); score
-- (observed − baseline) / scale. Error rates are fractions (0.25 = 25%),
-- latencies milliseconds.
--
-- alert_state: 'none' when no alert topic was configured, 'pending' until
-- the alert is published to Pub/Sub, then 'sent'.

-- +goose Up
CREATE TABLE apigee.anomalies (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket_start     timestamptz      NOT NULL,
    tenant           text             NOT NULL,
    organization     text             NOT NULL,
    environment      text             NOT NULL,
    apiproxy         text             NOT NULL,
    metric           text             NOT NULL CHECK (metric IN ('error_rate', 'p95_latency_ms')),
    observed         double precision NOT NULL,
    baseline         double precision NOT NULL,
    scale            double precision NOT NULL,
    score            double precision NOT NULL,
    calls            bigint           NOT NULL,
    baseline_minutes integer          NOT NULL,
    detected_at      timestamptz      NOT NULL DEFAULT now(),
    alert_state      text             NOT NULL DEFAULT 'none' CHECK (alert_state IN ('none', 'pending', 'sent')),
    alerted_at       timestamptz,
    CONSTRAINT anomalies_key UNIQUE (tenant, organization, environment, apiproxy, metric, bucket_start)
);
ALTER TABLE apigee.anomalies OWNER TO apigee_owner;
CREATE INDEX anomalies_bucket_idx ON apigee.anomalies (bucket_start);
CREATE INDEX anomalies_pending_idx ON apigee.anomalies (id) WHERE alert_state = 'pending';

REVOKE ALL ON apigee.anomalies FROM PUBLIC;
-- DELETE: anomalies are the rollup's own findings, kept as long as the
-- hourly rollups and removed by the rollup's retention step.
GRANT SELECT, INSERT, DELETE ON apigee.anomalies TO apigee_rollup;
GRANT UPDATE (alert_state, alerted_at) ON apigee.anomalies TO apigee_rollup;
GRANT SELECT ON apigee.anomalies TO apigee_reader;

ALTER TABLE apigee.anomalies ENABLE ROW LEVEL SECURITY;
CREATE POLICY reader_tenants ON apigee.anomalies FOR SELECT TO apigee_reader
    USING (tenant = ANY ((SELECT apigee.granted_tenants())::text[]));
CREATE POLICY rollup_all ON apigee.anomalies TO apigee_rollup USING (true) WITH CHECK (true);

-- +goose Down
DROP TABLE IF EXISTS apigee.anomalies;
