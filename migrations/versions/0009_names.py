"""One definition of a topic name and of a topic pattern in SQL, as in Python.

The rule for topic names (1 to 200 of ``A-Z a-z 0-9 . _ : -``) was written out in the
inbox's check, in ``capture()`` and in the consumers table's check; patterns (topic
characters and ``*``) in the retention table's. Each is now one SQL function, which those
use, and which a test compares with the HTTP layer's rule (service/core/topics.py).

Migrations snapshot the SQL they apply: the current definitions are in migrations/sql/.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

VALID_TOPIC = """
CREATE FUNCTION changefeed.valid_topic(name text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN length(name) BETWEEN 1 AND 200 AND name ~ '^[A-Za-z0-9._:-]+$';
"""

VALID_PATTERN = """
CREATE FUNCTION changefeed.valid_pattern(pattern text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN length(pattern) BETWEEN 1 AND 200 AND pattern ~ '^[A-Za-z0-9._:*-]+$';
"""

# event_ok() and capture() of 0008, with their topic checks calling valid_topic().
EVENT_OK = r"""
CREATE OR REPLACE FUNCTION changefeed.event_ok(topic text, type text, event_id text, data jsonb)
 RETURNS boolean
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
AS $function$
DECLARE
    max_bytes pg_catalog.int4 := changefeed.max_event_bytes();
    outsized pg_catalog.jsonb;
    number pg_catalog.jsonb;
    total pg_catalog.int8 := 0;
BEGIN
    IF topic IS NULL OR NOT changefeed.valid_topic(topic) THEN
        RAISE EXCEPTION 'changefeed: invalid topic %',
            pg_catalog.quote_nullable(pg_catalog.left(topic, 60))
            USING ERRCODE = '22023', HINT = 'A topic is 1 to 200 of A-Z a-z 0-9 . _ : -';
    END IF;
    IF type IS NULL OR pg_catalog.length(type) OPERATOR(pg_catalog.>) 200
       OR pg_catalog.length(type) OPERATOR(pg_catalog.<) 1
       OR type OPERATOR(pg_catalog.~) '[\x01-\x1f\x7f-\x9f\u2028\u2029]' THEN
        RAISE EXCEPTION 'changefeed: invalid type %',
            pg_catalog.quote_nullable(pg_catalog.left(type, 60))
            USING ERRCODE = '22023',
                  HINT = 'A type is 1 to 200 characters, without control characters or '
                         'line separators.';
    END IF;
    IF event_id IS NOT NULL AND (pg_catalog.length(event_id) OPERATOR(pg_catalog.>) 200
       OR pg_catalog.length(event_id) OPERATOR(pg_catalog.<) 1
       OR event_id OPERATOR(pg_catalog.~) '[\x01-\x1f\x7f-\x9f\u2028\u2029]') THEN
        RAISE EXCEPTION 'changefeed: invalid id %',
            pg_catalog.quote_literal(pg_catalog.left(event_id, 60))
            USING ERRCODE = '22023',
                  HINT = 'An id is 1 to 200 characters, without control characters or '
                         'line separators.';
    END IF;
    IF data OPERATOR(pg_catalog.@?) 'strict $.**{64} ? (@.type() == "object" || @.type() == "array")'::pg_catalog.jsonpath THEN
        RETURN changefeed.check_event_data(topic, data);  -- raises, saying so
    END IF;
    IF data OPERATOR(pg_catalog.@?) 'strict $.** ? (@.abs() >= 1e20 || @.abs() < 1e-20)'::pg_catalog.jsonpath THEN
        IF data OPERATOR(pg_catalog.@?) 'strict $.** ? (@.abs() >= 1e4300)'::pg_catalog.jsonpath THEN
            RETURN changefeed.check_event_data(topic, data);
        END IF;
        outsized := pg_catalog.jsonb_path_query_array(data, 'strict $.** ? (@.abs() >= 1e20 || @.abs() < 1e-20)'::pg_catalog.jsonpath);
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
            RETURN changefeed.check_event_data(topic, data);
        END IF;
    END IF;
    IF pg_catalog.octet_length(data::pg_catalog.text) OPERATOR(pg_catalog.>) max_bytes THEN
        RETURN changefeed.check_event_data(topic, data);
    END IF;
    RETURN true;
END
$function$
"""

CAPTURE = r"""
CREATE OR REPLACE FUNCTION changefeed.capture(target regclass, topic text DEFAULT NULL::text)
 RETURNS text
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    chosen text := coalesce(capture.topic,
                            (SELECT relname FROM pg_class WHERE oid = capture.target));
    key_columns text[];
BEGIN
    IF chosen IS NULL OR NOT valid_topic(chosen) THEN
        RAISE EXCEPTION 'changefeed.capture: invalid topic %', quote_literal(chosen)
            USING ERRCODE = '22023', HINT = 'A topic matches [A-Za-z0-9._:-]{1,200}.';
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
        'FOR EACH ROW EXECUTE FUNCTION changefeed.capture_row(%s)',
        capture.target,
        (SELECT string_agg(quote_literal(v), ', ') FROM unnest(key_columns) AS v));
    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION changefeed.capture_publish(%L)',
        'changefeed_capture' || chr(1), capture.target, chosen);
    EXECUTE format(
        'CREATE TRIGGER changefeed_capture_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION changefeed.capture_truncate(%L)',
        capture.target, chosen);
    INSERT INTO captures (table_name, topic, key_columns)
    VALUES (qualified_name(capture.target), chosen, key_columns);
    RETURN chosen;
END
$function$
"""

# The same as 0008 left them, for the downgrade.
EVENT_OK_0008 = r"""
CREATE OR REPLACE FUNCTION changefeed.event_ok(topic text, type text, event_id text, data jsonb)
 RETURNS boolean
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
AS $function$
DECLARE
    max_bytes pg_catalog.int4 := changefeed.max_event_bytes();
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
       OR type OPERATOR(pg_catalog.~) '[\x01-\x1f\x7f-\x9f\u2028\u2029]' THEN
        RAISE EXCEPTION 'changefeed: invalid type %',
            pg_catalog.quote_nullable(pg_catalog.left(type, 60))
            USING ERRCODE = '22023',
                  HINT = 'A type is 1 to 200 characters, without control characters or '
                         'line separators.';
    END IF;
    IF event_id IS NOT NULL AND (pg_catalog.length(event_id) OPERATOR(pg_catalog.>) 200
       OR pg_catalog.length(event_id) OPERATOR(pg_catalog.<) 1
       OR event_id OPERATOR(pg_catalog.~) '[\x01-\x1f\x7f-\x9f\u2028\u2029]') THEN
        RAISE EXCEPTION 'changefeed: invalid id %',
            pg_catalog.quote_literal(pg_catalog.left(event_id, 60))
            USING ERRCODE = '22023',
                  HINT = 'An id is 1 to 200 characters, without control characters or '
                         'line separators.';
    END IF;
    IF data OPERATOR(pg_catalog.@?) 'strict $.**{64} ? (@.type() == "object" || @.type() == "array")'::pg_catalog.jsonpath THEN
        RETURN changefeed.check_event_data(topic, data);  -- raises, saying so
    END IF;
    IF data OPERATOR(pg_catalog.@?) 'strict $.** ? (@.abs() >= 1e20 || @.abs() < 1e-20)'::pg_catalog.jsonpath THEN
        IF data OPERATOR(pg_catalog.@?) 'strict $.** ? (@.abs() >= 1e4300)'::pg_catalog.jsonpath THEN
            RETURN changefeed.check_event_data(topic, data);
        END IF;
        outsized := pg_catalog.jsonb_path_query_array(data, 'strict $.** ? (@.abs() >= 1e20 || @.abs() < 1e-20)'::pg_catalog.jsonpath);
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
            RETURN changefeed.check_event_data(topic, data);
        END IF;
    END IF;
    IF pg_catalog.octet_length(data::pg_catalog.text) OPERATOR(pg_catalog.>) max_bytes THEN
        RETURN changefeed.check_event_data(topic, data);
    END IF;
    RETURN true;
END
$function$
"""

CAPTURE_0008 = r"""
CREATE OR REPLACE FUNCTION changefeed.capture(target regclass, topic text DEFAULT NULL::text)
 RETURNS text
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    chosen text := coalesce(capture.topic,
                            (SELECT relname FROM pg_class WHERE oid = capture.target));
    key_columns text[];
BEGIN
    IF chosen !~ '^[A-Za-z0-9._:-]+$' OR length(chosen) > 200 THEN
        RAISE EXCEPTION 'changefeed.capture: invalid topic %', quote_literal(chosen)
            USING ERRCODE = '22023', HINT = 'A topic matches [A-Za-z0-9._:-]{1,200}.';
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
        'FOR EACH ROW EXECUTE FUNCTION changefeed.capture_row(%s)',
        capture.target,
        (SELECT string_agg(quote_literal(v), ', ') FROM unnest(key_columns) AS v));
    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION changefeed.capture_publish(%L)',
        'changefeed_capture' || chr(1), capture.target, chosen);
    EXECUTE format(
        'CREATE TRIGGER changefeed_capture_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION changefeed.capture_truncate(%L)',
        capture.target, chosen);
    INSERT INTO captures (table_name, topic, key_columns)
    VALUES (qualified_name(capture.target), chosen, key_columns);
    RETURN chosen;
END
$function$
"""


def upgrade() -> None:
    op.execute(VALID_TOPIC)
    op.execute(VALID_PATTERN)
    op.execute(EVENT_OK)
    op.execute(CAPTURE)
    for statement in (
        "ALTER TABLE changefeed.consumers DROP CONSTRAINT consumers_name_format, "
        "ADD CONSTRAINT consumers_name_format CHECK (changefeed.valid_topic(name))",
        "ALTER TABLE changefeed.retention DROP CONSTRAINT retention_pattern_format, "
        "ADD CONSTRAINT retention_pattern_format CHECK (changefeed.valid_pattern(pattern))",
        "REVOKE EXECUTE ON FUNCTION changefeed.valid_topic(text) FROM PUBLIC",
        "REVOKE EXECUTE ON FUNCTION changefeed.valid_pattern(text) FROM PUBLIC",
    ):
        op.execute(statement)


def downgrade() -> None:
    for statement in (
        "ALTER TABLE changefeed.consumers DROP CONSTRAINT consumers_name_format, "
        "ADD CONSTRAINT consumers_name_format CHECK (name ~ '^[A-Za-z0-9._:-]{1,200}$')",
        "ALTER TABLE changefeed.retention DROP CONSTRAINT retention_pattern_format, "
        "ADD CONSTRAINT retention_pattern_format CHECK (pattern ~ '^[A-Za-z0-9._:*-]{1,200}$')",
    ):
        op.execute(statement)
    op.execute(EVENT_OK_0008)
    op.execute(CAPTURE_0008)
    op.execute("DROP FUNCTION changefeed.valid_pattern(text)")
    op.execute("DROP FUNCTION changefeed.valid_topic(text)")
