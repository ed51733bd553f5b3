-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.capture_row()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    row_new jsonb;
    row_old jsonb;
    key_new jsonb;
    key_old jsonb;
    table_name text := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    changes jsonb;
    -- The key columns, then (after an empty argument) the excluded ones.
    separator int := array_position(TG_ARGV, '');
    keys text[] := CASE WHEN separator IS NULL THEN TG_ARGV ELSE TG_ARGV[0:separator - 1] END;
    excluded text[] := CASE WHEN separator IS NULL THEN '{}'::text[]
                            ELSE TG_ARGV[separator + 1:] END;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        row_new := to_jsonb(NEW) - excluded;
        key_new := (SELECT jsonb_object_agg(k, row_new -> k) FROM unnest(keys) AS k);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        row_old := to_jsonb(OLD) - excluded;
        key_old := (SELECT jsonb_object_agg(k, row_old -> k) FROM unnest(keys) AS k);
    END IF;
    IF TG_OP = 'UPDATE' AND row_new = row_old THEN
        -- Only excluded columns changed (or nothing): nothing to publish.
        changes := '[]';
    ELSIF TG_OP = 'UPDATE' AND key_new IS DISTINCT FROM key_old THEN
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
$function$;
