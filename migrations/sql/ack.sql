-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.ack(consumer_name text, lease_id uuid, upto bigint DEFAULT NULL::bigint)
 RETURNS TABLE(topic text, acked_seq bigint)
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
BEGIN
    RETURN QUERY
    UPDATE changefeed.consumer_topics ct
    SET acked_seq = coalesce(
            (SELECT max(e.seq) FROM changefeed.events e
             WHERE e.topic = ct.topic AND e.seq > ct.acked_seq AND e.seq <= ct.leased_seq
               AND (upto IS NULL OR e.position <= upto)),
            ct.acked_seq),
        lease = NULL, lease_expires = NULL, leased_seq = NULL
    WHERE ct.consumer = consumer_name AND ct.lease = lease_id
    RETURNING ct.topic, ct.acked_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lease % is not held by consumer %: it lapsed and its events were '
                        'handed out again, or it was already acknowledged',
                        lease_id, quote_literal(consumer_name)
            USING ERRCODE = '55000';
    END IF;
END
$function$;
