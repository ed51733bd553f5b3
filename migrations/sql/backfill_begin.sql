-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.backfill_begin(target regclass, row_filter text, estimate bigint)
 RETURNS bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
    INSERT INTO changefeed.backfills (table_name, topic, row_filter, rows_estimate,
                                      runner_pid, runner_started)
    SELECT c.table_name, c.topic, backfill_begin.row_filter, backfill_begin.estimate,
           pg_backend_pid(),
           (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid())
    FROM changefeed.captures c WHERE c.table_name = changefeed.qualified_name(target)
    RETURNING id
$function$;
