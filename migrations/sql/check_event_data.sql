-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.check_event_data(topic text, data jsonb)
 RETURNS boolean
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    max_bytes integer := changefeed.max_event_bytes();
    what text := CASE
        WHEN jsonb_typeof(data) = 'object' AND data ? 'table' AND data ? 'op'
        THEN format('the %s event of %s', left(data ->> 'op', 20), left(data ->> 'table', 130))
        ELSE format('an event of topic %s', topic) END;
    outsized jsonb;
    total bigint := 0;
BEGIN
    IF data @? 'strict $.**{64} ? (@.type() == "object" || @.type() == "array")'::jsonpath THEN
        RAISE EXCEPTION 'changefeed: % has data nested more than 64 levels deep', what
            USING ERRCODE = '22023',
                  HINT = 'Clients refuse deeper documents (.NET by default at 64 levels).';
    END IF;
    IF data @? 'strict $.** ? (@.abs() >= 1e4300)'::jsonpath THEN
        RAISE EXCEPTION 'changefeed: % holds a number of 1e4300 or more in magnitude', what
            USING ERRCODE = '22023',
                  HINT = 'Stored exactly, it would have more than 4300 digits, which clients '
                         'such as Python refuse to decode; send such values as strings.';
    END IF;
    FOR outsized IN SELECT jsonb_path_query(data, 'strict $.** ? (@.abs() >= 1e20 || @.abs() < 1e-20)'::jsonpath) LOOP
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
$function$;
