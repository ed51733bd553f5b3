-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.backfill_publish(run bigint, token uuid, events jsonb[])
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    chosen text;
BEGIN
    SELECT b.topic INTO chosen FROM backfills b
    WHERE b.id = run AND b.state = 'running'
      AND b.token_hash = sha256(convert_to(token::text, 'UTF8'));
    IF NOT FOUND THEN
        RAISE EXCEPTION 'changefeed.backfill_publish: no such running backfill'
            USING ERRCODE = '42501';
    END IF;
    INSERT INTO inbox (topic, type, data)
    SELECT chosen, 'read', e FROM unnest(events) WITH ORDINALITY AS x(e, n) ORDER BY n;
    RETURN cardinality(events);
END
$function$;
