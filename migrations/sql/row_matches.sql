-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.row_matches(candidate anyelement, row_filter text)
 RETURNS boolean
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    matched boolean;
BEGIN
    EXECUTE format('SELECT true FROM (SELECT ($1).*) AS r WHERE (%s)', row_filter)
    INTO matched USING candidate;
    RETURN coalesce(matched, false);
END
$function$;
