-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.capture_truncate()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
BEGIN
    INSERT INTO inbox (topic, type, data)
    VALUES (TG_ARGV[0], 'truncate', jsonb_build_object(
        'table', format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'op', 'truncate'));
    RETURN NULL;
END
$function$;
