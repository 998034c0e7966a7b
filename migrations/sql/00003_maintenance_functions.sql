-- Narrow, owner-owned entry points for the work that needs more privilege
-- than the roles calling it: creating partitions ahead of time, keeping
-- readers away from chunk tables, and re-passwording the ingest logins.

-- +goose Up
-- +goose StatementBegin
-- create_partition creates partition apigee_chunks.<name> of parent for
-- [lo, hi) unless it exists, and reports whether it did. Two sessions may
-- race to create the same range; the loser's error is harmless, so it is
-- swallowed. Only the owner's SECURITY DEFINER functions call it.
CREATE FUNCTION apigee.create_partition(parent regclass, name text, lo timestamptz, hi timestamptz) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF to_regclass(format('apigee_chunks.%I', name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE apigee_chunks.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)', name, parent, lo, hi);
    RETURN true;
EXCEPTION WHEN duplicate_table OR invalid_object_definition THEN
    RETURN false;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION apigee.create_partition(regclass, text, timestamptz, timestamptz) OWNER TO apigee_owner;
REVOKE ALL ON FUNCTION apigee.create_partition(regclass, text, timestamptz, timestamptz) FROM PUBLIC;

-- +goose StatementBegin
-- ensure_partitions creates the daily partitions of api_calls and
-- ingest_rejects covering [from_day, to_day] on plain PostgreSQL; it does
-- nothing on TimescaleDB, which creates chunks itself. Ingest calls it when a
-- row has no partition (late or early data), rollup calls it to stay ahead.
CREATE FUNCTION apigee.ensure_partitions(from_day date, to_day date) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d date;
    t text;
    created integer := 0;
BEGIN
    IF (SELECT value FROM apigee.settings WHERE key = 'storage') <> 'partitioned' THEN
        RETURN 0;
    END IF;
    IF from_day IS NULL OR to_day IS NULL OR to_day < from_day THEN
        RAISE EXCEPTION 'apigee.ensure_partitions: bad range [%, %]', from_day, to_day;
    END IF;
    IF to_day - from_day > 400 THEN
        RAISE EXCEPTION 'apigee.ensure_partitions: at most 400 days at once, asked for %', to_day - from_day;
    END IF;
    d := from_day;
    WHILE d <= to_day LOOP
        FOREACH t IN ARRAY ARRAY['api_calls', 'ingest_rejects'] LOOP
            IF apigee.create_partition(format('apigee.%I', t)::regclass, t || '_' || to_char(d, 'YYYYMMDD'),
                    d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC') THEN
                created := created + 1;
            END IF;
        END LOOP;
        d := d + 1;
    END LOOP;
    RETURN created;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION apigee.ensure_partitions(date, date) OWNER TO apigee_owner;
REVOKE ALL ON FUNCTION apigee.ensure_partitions(date, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apigee.ensure_partitions(date, date) TO apigee_ingest, apigee_rollup;

-- +goose StatementBegin
-- harden_chunks removes every privilege of readers (and PUBLIC) on the chunk
-- tables (and partitions) of every table in schema apigee: the raw tables
-- and the rollups that later migrations add. TimescaleDB copies the hypertable's grants
-- to each new chunk, and a chunk has no row-level security of its own, so a
-- reader's SELECT on a chunk would read every tenant (timescale/timescaledb#7830)
-- and show other tenants' values through pg_stats. The chunk schema is
-- already closed to readers; this closes the privilege too. Migrations run it,
-- and functions/rollup runs it every minute for the chunks created since.
CREATE FUNCTION apigee.harden_chunks() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c regclass;
    n integer := 0;
BEGIN
    FOR c IN
        SELECT i.inhrelid::regclass
        FROM pg_inherits i
        JOIN pg_class k ON k.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relnamespace = 'apigee'::regnamespace
          AND (has_table_privilege('apigee_reader', i.inhrelid, 'SELECT')
               OR k.relacl::text LIKE '%apigee_reader%'
               OR k.relacl::text LIKE '%=r%')
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM apigee_reader, PUBLIC', c);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION apigee.harden_chunks() OWNER TO apigee_owner;
REVOKE ALL ON FUNCTION apigee.harden_chunks() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apigee.harden_chunks() TO apigee_ingest, apigee_rollup;

-- +goose StatementBegin
-- set_login_password is how functions/rotate re-passwords the two ingest
-- logins, and nothing else: the role list is fixed here. It is owned by the
-- migrating role, which must be able to ALTER those roles (superuser, or
-- CREATEROLE with ADMIN on them). Pass a SCRAM-SHA-256 verifier rather than
-- the password so the password never reaches the server's statement log.
CREATE FUNCTION apigee.set_login_password(login name, secret text, valid_until timestamptz) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF login NOT IN ('apigee_ingest_a', 'apigee_ingest_b') THEN
        RAISE EXCEPTION 'apigee.set_login_password: % is not a rotatable login', login
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF secret IS NULL OR length(secret) < 32 THEN
        RAISE EXCEPTION 'apigee.set_login_password: secret too short';
    END IF;
    IF valid_until IS NULL OR valid_until <= now() THEN
        RAISE EXCEPTION 'apigee.set_login_password: valid_until must be in the future';
    END IF;
    EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L VALID UNTIL %L', login, secret, valid_until);
END
$$;
-- +goose StatementEnd
REVOKE ALL ON FUNCTION apigee.set_login_password(name, text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apigee.set_login_password(name, text, timestamptz) TO apigee_rotate;

SELECT apigee.ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 7);
SELECT apigee.harden_chunks();

-- +goose Down
DROP FUNCTION IF EXISTS apigee.create_partition(regclass, text, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS apigee.set_login_password(name, text, timestamptz);
DROP FUNCTION IF EXISTS apigee.harden_chunks();
DROP FUNCTION IF EXISTS apigee.ensure_partitions(date, date);
