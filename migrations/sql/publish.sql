-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.publish(topic text, type text, data jsonb, id text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
BEGIN
    INSERT INTO inbox (topic, type, data, event_id)
    VALUES (publish.topic, publish.type, coalesce(publish.data, 'null'::jsonb), publish.id);
END
$function$;
