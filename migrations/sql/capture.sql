-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
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
$function$;
