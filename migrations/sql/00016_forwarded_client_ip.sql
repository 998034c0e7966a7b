-- The forwarded client address (record field forwarded_client_ip): the
-- X-Forwarded-For entry the shared flow picked, beside client_ip, which on
-- Apigee X is the address that connected to the load balancer. A column
-- added to a hypertable or a partitioned table reaches every chunk or
-- partition; existing rows hold NULL, which the canonical hash skips for a
-- column added after the first revision (shared/audit), so their batches
-- still verify. Personal data, like client_ip (INGEST_PRIVACY).

-- +goose Up
ALTER TABLE apigee.api_calls ADD COLUMN forwarded_client_ip inet;
COMMENT ON COLUMN apigee.api_calls.forwarded_client_ip IS
    'X-Forwarded-For entry picked by the shared flow (timescale.in.xff_index, default the first); personal data';

-- +goose Down
ALTER TABLE apigee.api_calls DROP COLUMN forwarded_client_ip;
