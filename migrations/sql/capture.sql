-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.capture(target regclass, topic text DEFAULT NULL::text, exclude text[] DEFAULT '{}'::text[], row_filter text DEFAULT NULL::text)
 RETURNS text
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    chosen text := coalesce(capture.topic,
                            (SELECT relname FROM pg_class WHERE oid = capture.target));
    key_columns text[];
    excluded text[] := (SELECT coalesce(array_agg(DISTINCT e ORDER BY e), '{}')
                        FROM unnest(coalesce(capture.exclude, '{}')) AS e);
    unknown text;
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
    SELECT e INTO unknown FROM unnest(excluded) AS e
    WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = capture.target AND a.attname = e
                        AND a.attnum > 0 AND NOT a.attisdropped)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'changefeed.capture: % has no column %', capture.target,
            quote_literal(unknown) USING ERRCODE = '42703';
    END IF;
    SELECT e INTO unknown FROM unnest(excluded) AS e WHERE e = ANY (key_columns) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'changefeed.capture: % is a key column of %: it cannot be excluded',
            quote_literal(unknown), capture.target
            USING ERRCODE = '22023',
                  HINT = 'Events name the changed row by its primary key.';
    END IF;
    PERFORM check_row_filter(capture.target, capture.row_filter, 'changefeed.capture');
    PERFORM uncapture(capture.target);
    EXECUTE format(
        'CREATE TRIGGER changefeed_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION changefeed.capture_row(%s)',
        capture.target,
        (SELECT string_agg(quote_literal(v), ', ')
         FROM unnest(key_columns
                     || CASE WHEN excluded = '{}' AND capture.row_filter IS NULL
                             THEN '{}'::text[] ELSE ARRAY[''] || excluded END
                     || CASE WHEN capture.row_filter IS NULL THEN '{}'::text[]
                             ELSE ARRAY['', capture.row_filter] END) AS v));
    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION changefeed.capture_publish(%L)',
        'changefeed_capture' || chr(1), capture.target, chosen);
    EXECUTE format(
        'CREATE TRIGGER changefeed_capture_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION changefeed.capture_truncate(%L)',
        capture.target, chosen);
    INSERT INTO captures (table_name, topic, key_columns, excluded_columns, row_filter)
    VALUES (qualified_name(capture.target), chosen, key_columns, excluded, capture.row_filter);
    RETURN chosen;
END
$function$;
