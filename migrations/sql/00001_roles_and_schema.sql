-- Roles, schemas and the tenant grant table. Roles are cluster-wide, so every
-- CREATE ROLE is guarded: several databases (and test databases) share them.
--
-- apigee_owner   NOLOGIN; owns every object. Only it may change or drop rows.
-- apigee_ingest  NOLOGIN; inserts raw rows, rejects and batch records.
--                Login roles apigee_ingest_a/_b are its members; functions/rotate
--                alternates their passwords.
-- apigee_rollup  NOLOGIN; reads raw rows, writes rollups, runs retention through
--                an owner-owned SECURITY DEFINER function.
-- apigee_reader  NOLOGIN; reads through row-level security (apigee.tenant_grants).
-- apigee_rotate  NOLOGIN; may only re-password apigee_ingest_a/_b, through
--                apigee.set_login_password.

-- +goose Up
-- +goose StatementBegin
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['apigee_owner', 'apigee_ingest', 'apigee_rollup', 'apigee_reader', 'apigee_rotate'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
    FOREACH r IN ARRAY ARRAY['apigee_ingest_a', 'apigee_ingest_b'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            -- No password: the role cannot log in until functions/rotate sets one.
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        END IF;
        EXECUTE format('GRANT apigee_ingest TO %I', r);
    END LOOP;
    -- A non-superuser migrator (Cloud SQL's postgres) needs membership to hand
    -- objects to apigee_owner.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT apigee_owner TO %I', current_user);
    END IF;
END
$$;
-- +goose StatementEnd

CREATE SCHEMA IF NOT EXISTS apigee AUTHORIZATION apigee_owner;
-- Chunks (TimescaleDB) and partitions (plain PostgreSQL) live in schemas that
-- nobody but the owner may use: a direct read of a chunk would bypass
-- row-level security (timescale/timescaledb#7830).
CREATE SCHEMA IF NOT EXISTS apigee_chunks AUTHORIZATION apigee_owner;
REVOKE ALL ON SCHEMA apigee_chunks FROM PUBLIC;

GRANT USAGE ON SCHEMA apigee TO apigee_ingest, apigee_rollup, apigee_reader, apigee_rotate;

CREATE TABLE apigee.settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
ALTER TABLE apigee.settings OWNER TO apigee_owner;
GRANT SELECT ON apigee.settings TO apigee_ingest, apigee_rollup, apigee_reader;

-- Which tenants each reader role may see. A reader sees a tenant's rows when
-- any role it is a member of is granted that tenant.
CREATE TABLE apigee.tenant_grants (
    role_name  name NOT NULL,
    tenant     text NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role_name, tenant)
);
ALTER TABLE apigee.tenant_grants OWNER TO apigee_owner;

-- granted_tenants is SECURITY DEFINER so readers need no access to
-- tenant_grants itself; policies call it through a scalar subquery so it runs
-- once per query, not once per row.
-- +goose StatementBegin
CREATE FUNCTION apigee.granted_tenants() RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(DISTINCT g.tenant), '{}')
    FROM apigee.tenant_grants g
    WHERE pg_has_role(session_user, g.role_name, 'MEMBER')
       OR pg_has_role(current_user, g.role_name, 'MEMBER')
$$;
-- +goose StatementEnd
ALTER FUNCTION apigee.granted_tenants() OWNER TO apigee_owner;
REVOKE ALL ON FUNCTION apigee.granted_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apigee.granted_tenants() TO apigee_reader;

-- Raw rows and rejects are audit records: only the owner may change them.
-- +goose StatementBegin
CREATE FUNCTION apigee.forbid_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_has_role(current_user, 'apigee_owner', 'MEMBER') THEN
        RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    RAISE EXCEPTION 'apigee: %.% is append-only: % is not allowed', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'rows leave only through retention (whole chunks or partitions)';
END
$$;
-- +goose StatementEnd
ALTER FUNCTION apigee.forbid_change() OWNER TO apigee_owner;

-- +goose Down
DROP FUNCTION IF EXISTS apigee.forbid_change();
DROP FUNCTION IF EXISTS apigee.granted_tenants();
DROP TABLE IF EXISTS apigee.tenant_grants;
DROP TABLE IF EXISTS apigee.settings;
DROP SCHEMA IF EXISTS apigee_chunks;
-- Roles are cluster-wide and may serve other databases: they are left in place.
