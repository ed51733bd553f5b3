"""Security: no caller's objects run with the owner's rights; one rule for event data.

- Every function in the schema resolves names in ``pg_catalog`` and ``changefeed`` only:
  plpgsql functions carry ``SET search_path = pg_catalog, changefeed, pg_temp`` (``pg_temp``
  last: unlisted, it is searched *first* for types and tables, so a caller's temporary
  ``jsonb`` domain replaced the real type inside SECURITY DEFINER code); SQL functions are
  SQL-standard bodies (``BEGIN ATOMIC``), whose names are resolved once, when created.
- Capture serialises a row with the writer's rights, not the owner's: the row's column
  types (and any cast to json their owner created) run their code as whoever changed the
  row. Only the finished change crosses into owner code (see CAPTURE_ROW).
- An event follows one rule wherever it comes from (HTTP, ``publish()``, capture), checked
  by the inbox (``event_ok()``): its data at most 64 levels deep, with no number of 1e4300
  or more (more than 4300 digits as stored, which Python refuses to decode), and at most
  ``changefeed.max_event_bytes()`` bytes as stored (the jsonb text that subscribers
  receive). The limit is a function only the schema owner can replace (``changefeed
  migrate`` does, from CHANGEFEED_MAX_EVENT_BYTES): a setting such as
  ``changefeed.max_event_bytes`` was any session's to change with ``SET``.
- Types and ids refuse line and paragraph separators (U+2028, U+2029) and every control
  character (C0, DEL and C1: U+0085 split events in some SSE parsers), spelled as explicit
  code points rather than ``[[:cntrl:]]``, whose meaning depends on the database's locale.
- Consumers record the subject that created them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Frozen with this revision (a migration never imports the code it migrates for).
SCHEMA = "changefeed"
TEXT_FORBIDDEN_SQL = r"[\x01-\x1f\x7f-\x9f\u2028\u2029]"

PINNED = f"pg_catalog, {SCHEMA}, pg_temp"

# plpgsql functions that keep their bodies; only their search path is pinned.
PLPGSQL = [
    "sequence(integer)",
    "lease(text, integer)",
    "ack(text, uuid, bigint)",
    "verify(text)",
    "compact_range(text, bigint, bigint)",
    "trim(integer, timestamptz)",
]

# The size limit of event data as stored. Replaced by `changefeed migrate` when
# CHANGEFEED_MAX_EVENT_BYTES is set (schema.set_max_event_bytes); IMMUTABLE, so that
# event_ok() folds it to a constant once per session (and again after a replacement).
MAX_EVENT_BYTES = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.max_event_bytes() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN {{limit}};
"""

# Paths over event data, evaluated by PostgreSQL on the stored (binary) value, without
# printing it:
# - a container at level 64 means more than 64 levels of nesting;
# - numbers far from 1 print much longer than they may have been written (`1e300` is
#   stored as a 301-digit integer; `1e131071` as 131,072 digits; `0e-16383` as 16,385
#   characters, since a zero keeps the scale it was written with): "outsized" numbers,
#   zeros among them, are printed one by one and counted before the whole value is, so
#   that a small request can never make PostgreSQL print an enormous one just to find out
#   that it is too large. A nonzero number between 1e-20 and 1e20 prints at most 21
#   characters more than it was written.
TOO_DEEP = """'strict $.**{64} ? (@.type() == "object" || @.type() == "array")'"""
OUTSIZED = """'strict $.** ? (@.abs() >= 1e20 || @.abs() < 1e-20)'"""
UNDECODABLE = """'strict $.** ? (@.abs() >= 1e4300)'"""

# The exact decision, and the error saying what is wrong, for what event_ok() cannot pass
# at a glance.
CHECK_EVENT_DATA = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.check_event_data(topic text, data jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = {PINNED}
AS $fn$
DECLARE
    max_bytes integer := {SCHEMA}.max_event_bytes();
    what text := CASE
        WHEN jsonb_typeof(data) = 'object' AND data ? 'table' AND data ? 'op'
        THEN format('the %s event of %s', left(data ->> 'op', 20), left(data ->> 'table', 130))
        ELSE format('an event of topic %s', topic) END;
    outsized jsonb;
    total bigint := 0;
BEGIN
    IF data @? {TOO_DEEP}::jsonpath THEN
        RAISE EXCEPTION 'changefeed: % has data nested more than 64 levels deep', what
            USING ERRCODE = '22023',
                  HINT = 'Clients refuse deeper documents (.NET by default at 64 levels).';
    END IF;
    IF data @? {UNDECODABLE}::jsonpath THEN
        RAISE EXCEPTION 'changefeed: % holds a number of 1e4300 or more in magnitude', what
            USING ERRCODE = '22023',
                  HINT = 'Stored exactly, it would have more than 4300 digits, which clients '
                         'such as Python refuse to decode; send such values as strings.';
    END IF;
    FOR outsized IN SELECT jsonb_path_query(data, {OUTSIZED}::jsonpath) LOOP
        total := total + octet_length(outsized::text);
        IF total > max_bytes THEN
            RAISE EXCEPTION 'changefeed: % is over % bytes as stored, over the limit of %',
                what, total, max_bytes
                USING ERRCODE = '54000',
                      HINT = 'Sizes count the data as stored and sent (its jsonb text), in '
                             'which exponents are written out in full. The limit is '
                             'CHANGEFEED_MAX_EVENT_BYTES, applied by changefeed migrate.';
        END IF;
    END LOOP;
    total := octet_length(data::text);
    IF total > max_bytes THEN
        RAISE EXCEPTION 'changefeed: % is % bytes as stored, over the limit of %',
            what, total, max_bytes
            USING ERRCODE = '54000',
                  HINT = 'Sizes count the data as stored and sent (its jsonb text). The '
                         'limit is CHANGEFEED_MAX_EVENT_BYTES, applied by changefeed migrate.';
    END IF;
    RETURN true;
END
$fn$;
"""

# The rules of an event, as the inbox's one check, for every path (HTTP, publish(),
# capture): a topic, a type and an id as the HTTP layer checks them (topics.py), and data
# that is at most 64 levels deep, holds no number of 1e4300 or more, and is at most
# max_event_bytes() as stored. The usual case is decided here in a few microseconds; any
# other goes to check_event_data(), which decides exactly and raises an error that says
# what is wrong. One plpgsql function rather than several constraints: PostgreSQL prepares
# a table's check expressions again for every statement, which for the one-row inserts of
# publish() and capture cost more than the checks (measured: 11 µs for a `length(type)
# BETWEEN 1 AND 200` alone), while plpgsql keeps its prepared expressions for the session.
# No SET clause either, since one costs as much again per call: every name is qualified,
# so that the function means the same whatever the inserting session's search path.
EVENT_OK = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.event_ok(topic text, type text, event_id text,
                                             data jsonb)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $fn$
DECLARE
    max_bytes pg_catalog.int4 := {SCHEMA}.max_event_bytes();
    outsized pg_catalog.jsonb;
    number pg_catalog.jsonb;
    total pg_catalog.int8 := 0;
BEGIN
    IF topic IS NULL OR pg_catalog.length(topic) OPERATOR(pg_catalog.>) 200
       OR topic OPERATOR(pg_catalog.!~) '^[A-Za-z0-9._:-]+$' THEN
        RAISE EXCEPTION 'changefeed: invalid topic %',
            pg_catalog.quote_nullable(pg_catalog.left(topic, 60))
            USING ERRCODE = '22023', HINT = 'A topic is 1 to 200 of A-Z a-z 0-9 . _ : -';
    END IF;
    IF type IS NULL OR pg_catalog.length(type) OPERATOR(pg_catalog.>) 200
       OR pg_catalog.length(type) OPERATOR(pg_catalog.<) 1
       OR type OPERATOR(pg_catalog.~) '{TEXT_FORBIDDEN_SQL}' THEN
        RAISE EXCEPTION 'changefeed: invalid type %',
            pg_catalog.quote_nullable(pg_catalog.left(type, 60))
            USING ERRCODE = '22023',
                  HINT = 'A type is 1 to 200 characters, without control characters or '
                         'line separators.';
    END IF;
    IF event_id IS NOT NULL AND (pg_catalog.length(event_id) OPERATOR(pg_catalog.>) 200
       OR pg_catalog.length(event_id) OPERATOR(pg_catalog.<) 1
       OR event_id OPERATOR(pg_catalog.~) '{TEXT_FORBIDDEN_SQL}') THEN
        RAISE EXCEPTION 'changefeed: invalid id %',
            pg_catalog.quote_literal(pg_catalog.left(event_id, 60))
            USING ERRCODE = '22023',
                  HINT = 'An id is 1 to 200 characters, without control characters or '
                         'line separators.';
    END IF;
    IF data OPERATOR(pg_catalog.@?) {TOO_DEEP}::pg_catalog.jsonpath THEN
        RETURN {SCHEMA}.check_event_data(topic, data);  -- raises, saying so
    END IF;
    IF data OPERATOR(pg_catalog.@?) {OUTSIZED}::pg_catalog.jsonpath THEN
        IF data OPERATOR(pg_catalog.@?) {UNDECODABLE}::pg_catalog.jsonpath THEN
            RETURN {SCHEMA}.check_event_data(topic, data);
        END IF;
        outsized := pg_catalog.jsonb_path_query_array(data, {OUTSIZED}::pg_catalog.jsonpath);
        -- A number below 1e4300 prints in at most 20,700 characters: when so few are
        -- outsized that even that many could not pass the limit, print them at once (a
        -- zero or two, usually); else one by one, stopping past the limit.
        IF pg_catalog.jsonb_array_length(outsized) OPERATOR(pg_catalog.*) 20700
           OPERATOR(pg_catalog.<=) max_bytes THEN
            total := pg_catalog.octet_length(outsized::pg_catalog.text);
        ELSE
            FOR number IN SELECT pg_catalog.jsonb_array_elements(outsized) LOOP
                total := total OPERATOR(pg_catalog.+)
                         pg_catalog.octet_length(number::pg_catalog.text);
                EXIT WHEN total OPERATOR(pg_catalog.>) max_bytes;
            END LOOP;
        END IF;
        IF total OPERATOR(pg_catalog.>) max_bytes THEN
            RETURN {SCHEMA}.check_event_data(topic, data);
        END IF;
    END IF;
    IF pg_catalog.octet_length(data::pg_catalog.text) OPERATOR(pg_catalog.>) max_bytes THEN
        RETURN {SCHEMA}.check_event_data(topic, data);
    END IF;
    RETURN true;
END
$fn$;
"""

# publish() of 0007 without checks of its own: the inbox's check (event_ok) applies the
# one rule, and its size limit is no longer a setting that the caller could SET.
PUBLISH = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.publish(topic text, type text, data jsonb,
                                            id text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = {PINNED}
AS $fn$
BEGIN
    INSERT INTO inbox (topic, type, data, event_id)
    VALUES (publish.topic, publish.type, coalesce(publish.data, 'null'::jsonb), publish.id);
END
$fn$;
"""

# Capture, in two row triggers that fire one after the other for every changed row
# (AFTER ROW triggers of one event fire in name order):
#
# 1. changefeed_capture -> capture_row(), SECURITY INVOKER: serialises the row with the
#    rights of whoever changed it. `to_jsonb(NEW)` runs the output functions of the row's
#    types and any cast to json their owners created; as owner code, that handed the
#    schema owner's rights (a superuser, embedded) to anyone who may create a type and a
#    table. It leaves the finished change(s) in a transaction-local setting.
# 2. changefeed_capture<U+0001> -> capture_publish(), SECURITY DEFINER: takes them, checks
#    that they describe this table and this kind of change, and writes the inbox (which
#    the writer may not). A trigger function cannot be called directly, so the only way to
#    reach it is a real change of a captured table; the topic is its trigger argument,
#    fixed when the capture was declared. The setting is any session's to write, but
#    nothing runs between the two triggers: the second one's name is the first's followed
#    by U+0001, so no trigger name sorts between them (names compare byte by byte), and a
#    role with the TRIGGER privilege on the table, which may add triggers without owning
#    it, cannot slip one in to rewrite the setting. What arrives is what capture_row()
#    computed for this row. capture_publish() empties the setting, so that a row whose
#    first trigger did not run fails loudly instead of publishing the previous row's
#    change.
CAPTURE_ROW = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.capture_row() RETURNS trigger
LANGUAGE plpgsql
SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    row_new jsonb;
    row_old jsonb;
    key_new jsonb;
    key_old jsonb;
    table_name text := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    changes jsonb;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        row_new := to_jsonb(NEW);
        key_new := (SELECT jsonb_object_agg(k, row_new -> k) FROM unnest(TG_ARGV) AS k);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        row_old := to_jsonb(OLD);
        key_old := (SELECT jsonb_object_agg(k, row_old -> k) FROM unnest(TG_ARGV) AS k);
    END IF;
    IF TG_OP = 'UPDATE' AND key_new IS DISTINCT FROM key_old THEN
        -- A key change is a delete of the old key and an insert of the new one (0005).
        changes := jsonb_build_array(
            jsonb_build_object('table', table_name, 'op', 'delete', 'key', key_old,
                               'old', row_old),
            jsonb_build_object('table', table_name, 'op', 'insert', 'key', key_new,
                               'new', row_new));
    ELSE
        changes := jsonb_build_object('table', table_name, 'op', lower(TG_OP),
                                      'key', coalesce(key_old, key_new));
        IF row_new IS NOT NULL THEN changes := changes || jsonb_build_object('new', row_new);
        END IF;
        IF row_old IS NOT NULL THEN changes := changes || jsonb_build_object('old', row_old);
        END IF;
        changes := jsonb_build_array(changes);
    END IF;
    PERFORM set_config('changefeed.capture', changes::text, true);
    RETURN NULL;
END
$fn$;
"""

CAPTURE_PUBLISH = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.capture_publish() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = {PINNED}
AS $fn$
DECLARE
    pending text := current_setting('changefeed.capture', true);
    table_name text := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    changes jsonb;
    ops text;
    -- What the change of this row may be (a key-changing update is a delete and an insert).
    allowed text[] := CASE TG_OP WHEN 'INSERT' THEN ARRAY['insert']
                                 WHEN 'DELETE' THEN ARRAY['delete']
                                 ELSE ARRAY['update', 'delete,insert'] END;
BEGIN
    PERFORM set_config('changefeed.capture', '', true);
    IF pending IS NULL OR pending = '' THEN
        RAISE EXCEPTION 'changefeed capture of %: the row was not serialised', table_name
            USING ERRCODE = '55000',
                  HINT = 'The trigger changefeed_capture must fire just before the one that '
                         'publishes: declare the capture again.';
    END IF;
    changes := pending::jsonb;
    ops := (changes -> 0 ->> 'op') || coalesce(',' || (changes -> 1 ->> 'op'), '');
    IF jsonb_array_length(changes) > 2
       OR changes -> 0 ->> 'table' IS DISTINCT FROM table_name
       OR coalesce(changes -> 1 ->> 'table', table_name) <> table_name
       OR ops IS NULL OR NOT ops = ANY (allowed) THEN
        RAISE EXCEPTION 'changefeed capture of %: the serialised change does not match the '
                        'row''s %', table_name, lower(TG_OP)
            USING ERRCODE = '55000',
                  HINT = 'Another trigger ran between changefeed_capture and the one that '
                         'publishes: declare the capture again.';
    END IF;
    IF jsonb_array_length(changes) = 1 THEN
        INSERT INTO inbox (topic, type, data) VALUES (TG_ARGV[0], ops, changes -> 0);
    ELSE
        INSERT INTO inbox (topic, type, data)
        VALUES (TG_ARGV[0], 'delete', changes -> 0), (TG_ARGV[0], 'insert', changes -> 1);
    END IF;
    RETURN NULL;
END
$fn$;
"""

CAPTURE_TRUNCATE = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.capture_truncate() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = {PINNED}
AS $fn$
BEGIN
    INSERT INTO inbox (topic, type, data)
    VALUES (TG_ARGV[0], 'truncate', jsonb_build_object(
        'table', format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'op', 'truncate'));
    RETURN NULL;
END
$fn$;
"""

CAPTURE = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.capture(target regclass, topic text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = {PINNED}
AS $fn$
DECLARE
    chosen text := coalesce(capture.topic,
                            (SELECT relname FROM pg_class WHERE oid = capture.target));
    key_columns text[];
BEGIN
    IF chosen !~ '^[A-Za-z0-9._:-]+$' OR length(chosen) > 200 THEN
        RAISE EXCEPTION 'changefeed.capture: invalid topic %', quote_literal(chosen)
            USING ERRCODE = '22023', HINT = 'A topic matches [A-Za-z0-9._:-]{{1,200}}.';
    END IF;
    SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))
    INTO key_columns
    FROM pg_index i
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
    WHERE i.indrelid = capture.target AND i.indisprimary;
    IF key_columns IS NULL THEN
        RAISE EXCEPTION 'changefeed.capture: % has no primary key', capture.target
            USING ERRCODE = '55000',
                  HINT = 'Events name the changed row by its primary key: add one first.';
    END IF;
    PERFORM uncapture(capture.target);
    EXECUTE format(
        'CREATE TRIGGER changefeed_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.capture_row(%s)',
        capture.target,
        (SELECT string_agg(quote_literal(v), ', ') FROM unnest(key_columns) AS v));
    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.capture_publish(%L)',
        'changefeed_capture' || chr(1), capture.target, chosen);
    EXECUTE format(
        'CREATE TRIGGER changefeed_capture_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.capture_truncate(%L)',
        capture.target, chosen);
    INSERT INTO captures (table_name, topic, key_columns)
    VALUES (qualified_name(capture.target), chosen, key_columns);
    RETURN chosen;
END
$fn$;
"""

UNCAPTURE = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.uncapture(target regclass)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = {PINNED}
SET client_min_messages = warning  -- not a notice per trigger that was not there
AS $fn$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS changefeed_capture ON %s', target);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'changefeed_capture' || chr(1), target);
    EXECUTE format('DROP TRIGGER IF EXISTS changefeed_capture_truncate ON %s', target);
    DELETE FROM captures WHERE table_name = qualified_name(target);
    RETURN FOUND;
END
$fn$;
"""

# SQL functions as SQL-standard bodies: resolved now, under this migration's search path,
# and never again under a caller's. (A SET clause would do the same but costs a
# configuration change per call: chain_step() is the hash chain's per-row step.)
QUALIFIED_NAME = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.qualified_name(target regclass) RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT format('%I.%I', n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = target;
END;
"""

EVENT_CONTENT = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.event_content(topic text, seq bigint, type text,
                                                   data jsonb, "time" timestamptz,
                                                   event_id text)
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN convert_to(jsonb_build_array(
    topic, seq, type, data,
    to_char("time" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    event_id)::text, 'UTF8');
"""

CHAIN_STEP = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.chain_step(state bytea, content bytea, seed bytea)
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN sha256(coalesce(state, seed, ''::bytea) || content);
"""

RETENTION_FOR = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.retention_for(target text)
RETURNS {SCHEMA}.retention
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT r.* FROM {SCHEMA}.retention r
    WHERE r.pattern = target
       OR target LIKE replace(replace(r.pattern, '_', '\\_'), '*', '%')
    ORDER BY (r.pattern = target) DESC, length(r.pattern) DESC, r.pattern
    LIMIT 1;
END;
"""

# Re-declare every capture with the triggers of this revision.
REDECLARE = f"""
DO $do$
DECLARE
    declared record;
BEGIN
    FOR declared IN SELECT to_regclass(c.table_name) AS target, c.topic
                    FROM {SCHEMA}.captures c ORDER BY c.table_name LOOP
        IF declared.target IS NOT NULL THEN
            PERFORM {SCHEMA}.capture(declared.target, declared.topic);
        END IF;
    END LOOP;
END
$do$;
"""


def _initial_limit() -> int:
    """The limit a database had: its `changefeed.max_event_bytes` default, if one was set
    (ALTER DATABASE … SET, as 0001 to 0007 documented), else 64 KiB."""
    value = (
        op.get_bind()
        .exec_driver_sql("SELECT current_setting('changefeed.max_event_bytes', true)")
        .scalar()
    )
    try:
        limit = int(value) if value else 0
    except ValueError:
        limit = 0
    return limit if 0 < limit <= 1 << 28 else 65536


def upgrade() -> None:
    op.execute(MAX_EVENT_BYTES.format(limit=_initial_limit()))
    op.execute(CHECK_EVENT_DATA)
    op.execute(EVENT_OK)
    # For new rows: rows already waiting for the sequencer were accepted by the old rules
    # and go through as they are, rather than failing the upgrade.
    op.execute(
        f"""
        ALTER TABLE {SCHEMA}.inbox
            DROP CONSTRAINT inbox_topic_format,
            DROP CONSTRAINT inbox_type_format,
            DROP CONSTRAINT inbox_event_id_length,
            ADD CONSTRAINT inbox_event_rules
                CHECK ({SCHEMA}.event_ok(topic, type, event_id, data)) NOT VALID
        """
    )
    op.execute(PUBLISH)
    op.execute(QUALIFIED_NAME)
    op.execute(EVENT_CONTENT)
    op.execute(CHAIN_STEP)
    op.execute(RETENTION_FOR)
    op.execute(CAPTURE_ROW)
    op.execute(CAPTURE_PUBLISH)
    op.execute(CAPTURE_TRUNCATE)
    op.execute(UNCAPTURE)
    op.execute(CAPTURE)
    for function in PLPGSQL:
        op.execute(f"ALTER FUNCTION {SCHEMA}.{function} SET search_path = {PINNED}")
    op.execute(REDECLARE)
    # The subject (token `sub`) that created a consumer; NULL without authentication.
    op.add_column("consumers", sa.Column("owner", sa.Text), schema=SCHEMA)
    # New functions are the owner's alone (0006 revoked PUBLIC's default; restated here).
    op.execute(f"REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {SCHEMA} FROM PUBLIC")
    op.execute(
        f"""
        DO $do$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'changefeed_producer') THEN
                GRANT EXECUTE ON FUNCTION {SCHEMA}.publish(text, text, jsonb, text)
                    TO changefeed_producer;
            END IF;
        END
        $do$;
        """
    )


def downgrade() -> None:
    op.drop_column("consumers", "owner", schema=SCHEMA)
    for function in PLPGSQL:
        op.execute(f"ALTER FUNCTION {SCHEMA}.{function} RESET search_path")
    core = _revision("0002_capture")
    retention = _revision("0005_retention")
    chain = _revision("0004_hash_chain")
    cheaper = _revision("0007_cheaper")
    roles = _revision("0006_roles")
    replace = "CREATE OR REPLACE FUNCTION"
    op.execute(
        f"""
        DO $do$
        DECLARE
            declared record;
        BEGIN
            FOR declared IN SELECT to_regclass(table_name) AS target FROM {SCHEMA}.captures LOOP
                IF declared.target IS NOT NULL THEN
                    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s',
                                   'changefeed_capture' || chr(1), declared.target);
                END IF;
            END LOOP;
        END
        $do$;
        """
    )
    op.execute(f"DROP FUNCTION {SCHEMA}.capture(regclass, text)")
    op.execute(f"DROP FUNCTION {SCHEMA}.uncapture(regclass)")
    op.execute(core.UNCAPTURE)
    op.execute(core.CAPTURE)
    op.execute(f"DROP FUNCTION {SCHEMA}.capture_publish()")
    # Replaced in place: the captured tables' triggers depend on it until REDECLARE.
    op.execute(retention.CAPTURE_ROW)
    op.execute(core.CAPTURE_TRUNCATE.replace("CREATE FUNCTION", replace, 1))
    for function in roles.DEFINER:
        op.execute(
            f"ALTER FUNCTION {SCHEMA}.{function} SECURITY DEFINER "
            f"SET search_path = pg_catalog, {SCHEMA}"
        )
    op.execute(REDECLARE)
    op.execute(f"DROP FUNCTION {SCHEMA}.retention_for(text)")
    op.execute(retention.POLICY)
    op.execute(chain.CHAIN.replace("CREATE FUNCTION", replace, 1))
    op.execute(chain.CONTENT.replace("CREATE FUNCTION", replace, 1))
    op.execute(core.QUALIFIED_NAME.replace("CREATE FUNCTION", replace, 1))
    op.execute(cheaper.PUBLISH)
    op.execute(
        f"""
        ALTER TABLE {SCHEMA}.inbox
            DROP CONSTRAINT inbox_event_rules,
            ADD CONSTRAINT inbox_topic_format CHECK ({cheaper.TOPIC_CHECK}),
            ADD CONSTRAINT inbox_type_format CHECK ({cheaper.TYPE_CHECK}),
            ADD CONSTRAINT inbox_event_id_length CHECK (length(event_id) BETWEEN 1 AND 200)
        """
    )
    op.execute(f"DROP FUNCTION {SCHEMA}.event_ok(text, text, text, jsonb)")
    op.execute(f"DROP FUNCTION {SCHEMA}.check_event_data(text, jsonb)")
    op.execute(f"DROP FUNCTION {SCHEMA}.max_event_bytes()")


def _revision(name: str) -> ModuleType:
    """An earlier revision, loaded from its file beside this one: in a source checkout and
    in the installed wheel alike (they are not importable as a package there)."""
    spec = importlib.util.spec_from_file_location(
        f"changefeed_revision_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
