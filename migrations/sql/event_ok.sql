-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
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
$function$;
