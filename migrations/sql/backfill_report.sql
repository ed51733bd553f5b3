-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.backfill_report(run bigint, token uuid, last_key text[], rows_read bigint, state text, error text)
 RETURNS void
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
    UPDATE changefeed.backfills b
    SET rows_read = b.rows_read + backfill_report.rows_read,
        last_key = coalesce(backfill_report.last_key, b.last_key),
        state = backfill_report.state, error = backfill_report.error,
        updated_at = clock_timestamp(),
        finished_at = CASE WHEN backfill_report.state <> 'running' THEN clock_timestamp() END
    WHERE b.id = run AND b.state = 'running'
      AND b.token_hash = sha256(convert_to(token::text, 'UTF8'))
$function$;
