-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.backfill_begin(target regclass, row_filter text, estimate bigint, token uuid)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    run bigint;
BEGIN
    IF NOT (has_table_privilege(session_user, target, 'SELECT')
            AND has_table_privilege(session_user, target, 'UPDATE')) THEN
        RAISE EXCEPTION 'changefeed.backfill: % may not read and lock %', session_user, target
            USING ERRCODE = '42501',
                  HINT = 'A backfill needs SELECT and UPDATE (for FOR SHARE) on the table.';
    END IF;
    INSERT INTO backfills (table_name, topic, row_filter, rows_estimate, runner_pid,
                           token_hash)
    SELECT c.table_name, c.topic, backfill_begin.row_filter, backfill_begin.estimate,
           pg_backend_pid(), sha256(convert_to(token::text, 'UTF8'))
    FROM captures c WHERE c.table_name = qualified_name(target)
    RETURNING id INTO run;
    RETURN run;
END
$function$;
