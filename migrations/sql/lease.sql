-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.lease(consumer_name text, max_events integer)
 RETURNS TABLE(lease uuid, expires_at timestamp with time zone, "position" bigint, topic text, seq bigint, type text, data jsonb, "time" timestamp with time zone, event_id text)
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    c changefeed.consumers%ROWTYPE;
    new_lease uuid := gen_random_uuid();
    expires timestamptz;
BEGIN
    SELECT * INTO c FROM changefeed.consumers WHERE name = consumer_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no consumer named %', quote_literal(consumer_name)
            USING ERRCODE = 'P0002';
    END IF;
    expires := clock_timestamp() + c.visibility_timeout;
    -- Topics that appeared since the last poll start from their first event.
    INSERT INTO changefeed.consumer_topics (consumer, topic)
    SELECT c.name, t.topic FROM changefeed.topics t
    WHERE t.topic = ANY (c.topics) OR t.topic LIKE ANY (c.patterns)
    ON CONFLICT DO NOTHING;

    RETURN QUERY
    WITH free AS (
        SELECT ct.topic, ct.acked_seq
        FROM changefeed.consumer_topics ct
        JOIN changefeed.topics t ON t.topic = ct.topic
        WHERE ct.consumer = c.name
          AND t.head > ct.acked_seq
          AND (ct.lease IS NULL OR ct.lease_expires < clock_timestamp())
        -- Oldest pending event first, so that no topic starves.
        ORDER BY (SELECT e.position FROM changefeed.events e
                  WHERE e.topic = ct.topic AND e.seq = ct.acked_seq + 1)
        LIMIT max_events
        FOR UPDATE OF ct SKIP LOCKED
    ),
    picked AS (
        SELECT e.position, e.topic, e.seq, e.type, e.data, e.time, e.event_id
        FROM free f
        CROSS JOIN LATERAL (
            SELECT * FROM changefeed.events e
            WHERE e.topic = f.topic AND e.seq > f.acked_seq
            ORDER BY e.seq LIMIT max_events
        ) e
        -- Positions grow with seq within a topic: each topic gets a prefix of what it owes.
        ORDER BY e.position
        LIMIT max_events
    ),
    leased AS (
        UPDATE changefeed.consumer_topics ct
        SET lease = new_lease, lease_expires = expires, leased_seq = p.last_seq
        FROM (SELECT picked.topic, max(picked.seq) AS last_seq FROM picked
              GROUP BY picked.topic) p
        WHERE ct.consumer = c.name AND ct.topic = p.topic
        RETURNING ct.topic
    )
    SELECT new_lease, expires, p.position, p.topic, p.seq, p.type, p.data, p.time, p.event_id
    FROM picked p
    WHERE p.topic IN (SELECT leased.topic FROM leased)
    ORDER BY p.position;
END
$function$;
