-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.check_row_filter(target regclass, row_filter text, caller text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    probe refcursor;
BEGIN
    IF row_filter IS NULL THEN
        RETURN;
    END IF;
    IF btrim(row_filter) = '' THEN
        RAISE EXCEPTION '%: the row filter is empty', caller
            USING ERRCODE = '22023', HINT = 'Leave it out to take every row.';
    END IF;
    BEGIN
        OPEN probe FOR EXECUTE format(
            'SELECT true FROM (SELECT (NULL::%s).*) AS r WHERE (%s) LIMIT 0',
            target, row_filter);
        CLOSE probe;
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION '%: invalid row filter %: %', caller, quote_literal(row_filter), SQLERRM
            USING ERRCODE = SQLSTATE,
                  HINT = 'A row filter is one boolean SQL expression on the table''s columns, '
                         'such as tenant_id = 42; qualify functions outside pg_catalog.';
    END;
END
$function$;
