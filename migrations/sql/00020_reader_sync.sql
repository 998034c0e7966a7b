-- Reader roles mirrored from Apigee (functions/readers). Each Apigee app
-- marked timescale_reader=true gets one NOLOGIN role apigee_app_<16 hex>,
-- a member of apigee_reader, whose apigee.tenant_grants rows are exactly
-- the tenants its timescale_tenants attribute lists.
--
-- apigee_reader_sync  NOLOGIN; the sync function's logins are its members.
--                     It may read the registry and the grants, and change
--                     them only through the two functions below.
-- apigee_app_reader   NOLOGIN, no privileges: the marker. Every role the
--                     sync made is a member, and nothing else should be.
--
-- The functions are SECURITY DEFINER and owned by the migrating role (as
-- apigee.set_login_password is): creating roles needs CREATEROLE, which
-- apigee_owner does not have. They are the only way the sync changes roles,
-- and they refuse any role that does not carry all three marks: a name
-- apigee_app_ + 16 hex digits derived from this database and the app's id,
-- membership in apigee_app_reader, and a row in this database's registry
-- apigee.reader_apps. Giving the sync CREATEROLE instead would let it alter
-- every non-superuser role of the cluster (and, before PostgreSQL 16, grant
-- itself apigee_owner); here it can do nothing but what these functions do.
-- Role names hash the database's name too, so two databases of one cluster
-- (staging and production, or parallel tests) never share a synced role.

-- +goose Up
-- +goose StatementBegin
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['apigee_reader_sync', 'apigee_app_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;
-- +goose StatementEnd
GRANT USAGE ON SCHEMA apigee TO apigee_reader_sync;

-- The roles this database's sync made, one per Apigee app.
CREATE TABLE apigee.reader_apps (
    role_name  name PRIMARY KEY CHECK (role_name ~ '^apigee_app_[0-9a-f]{16}$'),
    app_id     text NOT NULL UNIQUE,
    app_name   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE apigee.reader_apps OWNER TO apigee_owner;
GRANT SELECT ON apigee.reader_apps TO apigee_reader_sync;
GRANT SELECT ON apigee.tenant_grants TO apigee_reader_sync;

-- Tenants that may be granted although no hour rollup of theirs exists yet.
-- A tenant is known when it is listed here or has rows in api_calls_1h; the
-- sync refuses an app that names any other. Not the raw rows: no index leads
-- with tenant there, and an unknown name would scan every raw row.
CREATE TABLE apigee.known_tenants (
    tenant   text PRIMARY KEY,
    added_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE apigee.known_tenants OWNER TO apigee_owner;
GRANT SELECT ON apigee.known_tenants TO apigee_reader_sync;

-- +goose StatementBegin
-- reader_role_name is the role an app id maps to in this database.
CREATE FUNCTION apigee.reader_role_name(app_id text) RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ('apigee_app_' || left(encode(sha256(
        convert_to(current_database(), 'UTF8') || '\x00'::bytea || convert_to(app_id, 'UTF8')), 'hex'), 16))::name
$$;
-- +goose StatementEnd
ALTER FUNCTION apigee.reader_role_name(text) OWNER TO apigee_owner;

-- +goose StatementBegin
-- unknown_tenants returns those of tenants that are not known (above).
-- SECURITY DEFINER: the sync may not read the rows themselves.
CREATE FUNCTION apigee.unknown_tenants(tenants text[]) RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(t ORDER BY t), '{}')
    FROM unnest(tenants) t
    WHERE NOT EXISTS (SELECT 1 FROM apigee.known_tenants k WHERE k.tenant = t)
      AND NOT EXISTS (SELECT 1 FROM apigee.api_calls_1h h WHERE h.tenant = t)
$$;
-- +goose StatementEnd
ALTER FUNCTION apigee.unknown_tenants(text[]) OWNER TO apigee_owner;
REVOKE ALL ON FUNCTION apigee.unknown_tenants(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apigee.unknown_tenants(text[]) TO apigee_reader_sync;

-- +goose StatementBegin
-- reader_role_check raises unless role is one the sync made here, and says
-- whether it still exists: false when it is gone (dropped by hand), so that
-- only its entry and grants are left to tidy.
CREATE FUNCTION apigee.reader_role_check(role name, app_id text) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF role IS NULL OR role !~ '^apigee_app_[0-9a-f]{16}$' THEN
        RAISE EXCEPTION 'apigee: % is not a synced reader role name', role USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF app_id IS NOT NULL AND role <> apigee.reader_role_name(app_id) THEN
        RAISE EXCEPTION 'apigee: % is not the role of app %', role, app_id USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role) THEN
        RETURN false;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM apigee.reader_apps a WHERE a.role_name = role) OR NOT EXISTS (
            SELECT 1 FROM pg_auth_members m
            JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid
            WHERE r.rolname = role AND g.rolname = 'apigee_app_reader') THEN
        RAISE EXCEPTION 'apigee: role % exists and was not made by the reader sync of this database', role
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN true;
END
$$;
-- +goose StatementEnd
REVOKE ALL ON FUNCTION apigee.reader_role_check(name, text) FROM PUBLIC;

-- +goose StatementBegin
-- reader_role_put makes app_id's role (creating it if need be) a member of
-- apigee_reader granted exactly tenants, whose only member is iam_user (a
-- Cloud SQL IAM database user; NULL: none). Returns the role's name.
CREATE FUNCTION apigee.reader_role_put(app_id text, app_name text, tenants text[], iam_user name) RETURNS name
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    role name := apigee.reader_role_name(app_id);
    m name;
BEGIN
    IF tenants IS NULL OR cardinality(tenants) = 0 OR cardinality(tenants) > 1000 THEN
        RAISE EXCEPTION 'apigee.reader_role_put: between 1 and 1000 tenants' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT apigee.reader_role_check(role, app_id) THEN
        DELETE FROM apigee.tenant_grants g WHERE g.role_name = role;
        DELETE FROM apigee.reader_apps a WHERE a.role_name = role;
        EXECUTE format('CREATE ROLE %I NOLOGIN', role);
        EXECUTE format('GRANT apigee_app_reader TO %I', role);
        INSERT INTO apigee.reader_apps (role_name, app_id, app_name) VALUES (role, app_id, app_name);
    ELSE
        UPDATE apigee.reader_apps a SET app_name = reader_role_put.app_name, updated_at = now()
        WHERE a.role_name = role AND a.app_name IS DISTINCT FROM reader_role_put.app_name;
    END IF;
    IF NOT pg_has_role(role, 'apigee_reader', 'MEMBER') THEN
        EXECUTE format('GRANT apigee_reader TO %I', role);
    END IF;
    DELETE FROM apigee.tenant_grants g WHERE g.role_name = role AND g.tenant <> ALL (tenants);
    INSERT INTO apigee.tenant_grants (role_name, tenant)
    SELECT role, t FROM unnest(tenants) t ON CONFLICT DO NOTHING;
    FOR m IN SELECT r.rolname FROM pg_auth_members x JOIN pg_roles r ON r.oid = x.member JOIN pg_roles g ON g.oid = x.roleid
             WHERE g.rolname = role AND r.rolname IS DISTINCT FROM iam_user LOOP
        EXECUTE format('REVOKE %I FROM %I', role, m);
    END LOOP;
    IF iam_user IS NOT NULL THEN
        IF position('@' IN iam_user) = 0 OR NOT EXISTS (
                SELECT 1 FROM pg_roles r WHERE r.rolname = iam_user AND r.rolcanlogin AND NOT r.rolsuper) THEN
            RAISE EXCEPTION 'apigee.reader_role_put: % is not an IAM database user (a login whose name has an @)', iam_user
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF NOT pg_has_role(iam_user, role, 'MEMBER') THEN
            EXECUTE format('GRANT %I TO %I', role, iam_user);
        END IF;
    END IF;
    RETURN role;
END
$$;
-- +goose StatementEnd
REVOKE ALL ON FUNCTION apigee.reader_role_put(text, text, text[], name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apigee.reader_role_put(text, text, text[], name) TO apigee_reader_sync;

-- +goose StatementBegin
-- reader_role_drop removes a role the sync made, its grants and its entry.
CREATE FUNCTION apigee.reader_role_drop(role name) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    present boolean;
BEGIN
    present := apigee.reader_role_check(role, NULL);
    DELETE FROM apigee.tenant_grants g WHERE g.role_name = role;
    DELETE FROM apigee.reader_apps a WHERE a.role_name = role;
    IF present THEN
        EXECUTE format('DROP ROLE %I', role);
    END IF;
END
$$;
-- +goose StatementEnd
REVOKE ALL ON FUNCTION apigee.reader_role_drop(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apigee.reader_role_drop(name) TO apigee_reader_sync;

-- +goose Down
DROP FUNCTION IF EXISTS apigee.reader_role_drop(name);
DROP FUNCTION IF EXISTS apigee.reader_role_put(text, text, text[], name);
DROP FUNCTION IF EXISTS apigee.reader_role_check(name, text);
DROP FUNCTION IF EXISTS apigee.unknown_tenants(text[]);
DROP FUNCTION IF EXISTS apigee.reader_role_name(text);
DROP TABLE IF EXISTS apigee.known_tenants;
DROP TABLE IF EXISTS apigee.reader_apps;
-- Roles are cluster-wide and may serve other databases: they are left in place.
