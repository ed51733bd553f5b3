-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.uncapture(target regclass)
 RETURNS boolean
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
 SET client_min_messages TO 'warning'
AS $function$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS changefeed_capture ON %s', target);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'changefeed_capture' || chr(1), target);
    EXECUTE format('DROP TRIGGER IF EXISTS changefeed_capture_truncate ON %s', target);
    DELETE FROM captures WHERE table_name = qualified_name(target);
    RETURN FOUND;
END
$function$;
