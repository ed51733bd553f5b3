-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.capture_publish()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    pending text := current_setting('changefeed.capture', true);
    table_name text := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    changes jsonb;
    ops text;
    -- What the change of this row may be: a key-changing update is a delete and an
    -- insert; an update across the row filter is a delete or an insert.
    allowed text[] := CASE TG_OP WHEN 'INSERT' THEN ARRAY['insert']
                                 WHEN 'DELETE' THEN ARRAY['delete']
                                 ELSE ARRAY['update', 'delete,insert', 'delete', 'insert'] END;
BEGIN
    PERFORM set_config('changefeed.capture', '', true);
    IF pending IS NULL OR pending = '' THEN
        RAISE EXCEPTION 'changefeed capture of %: the row was not serialised', table_name
            USING ERRCODE = '55000',
                  HINT = 'The trigger changefeed_capture must fire just before the one that '
                         'publishes: declare the capture again.';
    END IF;
    changes := pending::jsonb;
    IF changes = '[]' THEN
        RETURN NULL;  -- outside the row filter, or only excluded columns changed
    END IF;
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
$function$;
