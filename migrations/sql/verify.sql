-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.verify(target text)
 RETURNS TABLE(seq bigint, problem text)
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    mark changefeed.topics%ROWTYPE;
    checked bigint;
    last_hash bytea;
BEGIN
    SELECT * INTO mark FROM changefeed.topics t WHERE t.topic = target;
    mark.first_seq := coalesce(mark.first_seq, 1);
    RETURN QUERY
    WITH recomputed AS (
        SELECT e.seq, e.hash,
               mark.first_seq - 1 + row_number() OVER (ORDER BY e.seq) AS n,
               changefeed.chain_hash(
                   changefeed.event_content(e.topic, e.seq, e.type, e.data, e.time, e.event_id),
                   mark.tail_hash) OVER (ORDER BY e.seq) AS expected
        FROM changefeed.events e WHERE e.topic = target AND e.seq >= mark.first_seq
    )
    SELECT r.seq,
           CASE WHEN r.seq <> r.n THEN format('seq %s missing', r.n)
                ELSE 'hash mismatch: the event or one before it was changed' END
    FROM recomputed r
    WHERE r.seq <> r.n OR r.hash IS DISTINCT FROM r.expected
    ORDER BY r.seq
    LIMIT 1;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT max(e.seq), (array_agg(e.hash ORDER BY e.seq DESC))[1] INTO checked, last_hash
    FROM changefeed.events e WHERE e.topic = target AND e.seq >= mark.first_seq;
    checked := coalesce(checked, mark.first_seq - 1);
    last_hash := coalesce(last_hash, mark.tail_hash);
    IF coalesce(mark.head, 0) <> checked OR mark.head_hash IS DISTINCT FROM last_hash THEN
        RETURN QUERY SELECT checked + 1,
            format('the head says seq %s, the table ends at %s: events were removed or added',
                   coalesce(mark.head, 0), checked);
    END IF;
END
$function$;
