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
    -- The key columns; after an empty argument the excluded ones; after a second, the
    -- row filter. Triggers declared before 0010 have no separator, before 0011 one.
    separator int := array_position(TG_ARGV, '');
    second int := CASE WHEN separator IS NOT NULL
                       THEN array_position(TG_ARGV, '', separator + 1) END;
    keys text[] := CASE WHEN separator IS NULL THEN TG_ARGV ELSE TG_ARGV[0:separator - 1] END;
    excluded text[] := CASE WHEN separator IS NULL THEN '{}'::text[]
                            WHEN second IS NULL THEN TG_ARGV[separator + 1:]
                            ELSE TG_ARGV[separator + 1:second - 1] END;
    row_filter text := CASE WHEN second IS NOT NULL THEN TG_ARGV[second + 1] END;
    -- Whether the row satisfies the filter before and after the change.
    was_in boolean := TG_OP <> 'INSERT';
    is_in boolean := TG_OP <> 'DELETE';
BEGIN
    IF row_filter IS NOT NULL THEN
        IF was_in THEN
            EXECUTE format('SELECT true FROM (SELECT ($1).*) AS r WHERE (%s)', row_filter)
            INTO was_in USING OLD;
            was_in := coalesce(was_in, false);
        END IF;
        IF is_in THEN
            EXECUTE format('SELECT true FROM (SELECT ($1).*) AS r WHERE (%s)', row_filter)
            INTO is_in USING NEW;
            is_in := coalesce(is_in, false);
        END IF;
    END IF;
    IF is_in THEN
        row_new := to_jsonb(NEW) - excluded;
        key_new := (SELECT jsonb_object_agg(k, row_new -> k) FROM unnest(keys) AS k);
    END IF;
    IF was_in THEN
        row_old := to_jsonb(OLD) - excluded;
        key_old := (SELECT jsonb_object_agg(k, row_old -> k) FROM unnest(keys) AS k);
    END IF;
    IF NOT was_in AND NOT is_in OR was_in AND is_in AND row_new = row_old THEN
        -- Outside the filter, or only excluded columns changed (or nothing): no event.
        changes := '[]';
    ELSIF TG_OP = 'UPDATE' AND was_in AND is_in AND key_new IS DISTINCT FROM key_old THEN
        -- A key change is a delete of the old key and an insert of the new one (0005).
        changes := jsonb_build_array(
            jsonb_build_object('table', table_name, 'op', 'delete', 'key', key_old,
                               'old', row_old),
            jsonb_build_object('table', table_name, 'op', 'insert', 'key', key_new,
                               'new', row_new));
    ELSE
        -- An update that takes the row out of the filter is its delete; into it, its insert.
        changes := jsonb_build_object(
            'table', table_name,
            'op', CASE WHEN TG_OP <> 'UPDATE' THEN lower(TG_OP)
                       WHEN NOT is_in THEN 'delete' WHEN NOT was_in THEN 'insert'
                       ELSE 'update' END,
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
