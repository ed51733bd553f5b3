-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.sequence(max_rows integer DEFAULT 1000, OUT consumed integer, OUT sequenced integer)
 RETURNS record
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    last_position bigint;
    heads jsonb;
    hint text;
BEGIN
    PERFORM pg_advisory_xact_lock(4210881002);

    WITH batch AS (
        DELETE FROM changefeed.inbox
        -- Not `id IN (subquery)`: planned while the inbox was small, that became a hash
        -- join over a sequential scan of the whole inbox, and a backlog of 800k rows made
        -- every step scan it (sequencing fell to 3k events/s). An array of ids is always
        -- looked up through the primary key.
        WHERE id = ANY(ARRAY(SELECT id FROM changefeed.inbox ORDER BY id LIMIT max_rows))
        RETURNING id, topic, type, data, event_id, published_at
    ),
    fresh AS (
        SELECT b.id, b.topic, b.type, b.data, b.event_id, b.published_at
        FROM (
            SELECT batch.*,
                   row_number() OVER (PARTITION BY batch.topic, batch.event_id
                                      ORDER BY batch.id) AS copy
            FROM batch
        ) b
        WHERE b.event_id IS NULL
           OR (b.copy = 1 AND NOT EXISTS (
                   SELECT 1 FROM changefeed.events e
                   WHERE e.topic = b.topic AND e.event_id = b.event_id))
    ),
    numbered AS (
        SELECT f.*,
               coalesce(t.head, 0)
                   + row_number() OVER (PARTITION BY f.topic ORDER BY f.id) AS seq,
               (SELECT s.position FROM changefeed.sequencer s)
                   + row_number() OVER (ORDER BY f.id) AS position,
               t.head_hash AS seed,
               now() AS stamp
        FROM fresh f
        LEFT JOIN changefeed.topics t ON t.topic = f.topic
    ),
    hashed AS (
        SELECT n.*,
               changefeed.chain_hash(
                   -- event_content(), inlined: called per row it cost a sixth of a step
                   convert_to(jsonb_build_array(
                       n.topic, n.seq, n.type, n.data,
                       to_char(n.stamp AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                       n.event_id)::text, 'UTF8'),
                   n.seed) OVER (PARTITION BY n.topic ORDER BY n.seq) AS hash
        FROM numbered n
    ),
    stored AS (
        INSERT INTO changefeed.events
            (topic, seq, position, type, data, event_id, time, published_at, hash)
        SELECT h.topic, h.seq, h.position, h.type, h.data, h.event_id, h.stamp,
               h.published_at, h.hash
        FROM hashed h
        RETURNING 1
    ),
    new_heads AS (
        INSERT INTO changefeed.topics AS t (topic, head, head_hash)
        SELECT DISTINCT ON (h.topic) h.topic, h.seq, h.hash
        FROM hashed h ORDER BY h.topic, h.seq DESC
        ON CONFLICT (topic) DO UPDATE SET head = excluded.head, head_hash = excluded.head_hash
        RETURNING t.topic, t.head
    ),
    advanced AS (
        UPDATE changefeed.sequencer s SET position = s.position + (SELECT count(*) FROM fresh)
        RETURNING s.position
    )
    SELECT (SELECT count(*) FROM batch),
           (SELECT count(*) FROM stored),
           (SELECT max(advanced.position) FROM advanced),
           (SELECT jsonb_object_agg(new_heads.topic, new_heads.head) FROM new_heads)
    INTO consumed, sequenced, last_position, heads;

    IF sequenced > 0 THEN
        hint := jsonb_build_object('position', last_position, 'topics', heads)::text;
        IF octet_length(hint) > 7900 THEN
            hint := jsonb_build_object('position', last_position)::text;
        END IF;
        PERFORM pg_notify('changefeed_events', hint);
    END IF;
END
$function$;
