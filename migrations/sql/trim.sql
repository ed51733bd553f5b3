-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed."trim"(max_rows integer DEFAULT 5000, at timestamp with time zone DEFAULT now())
 RETURNS TABLE(topic text, first_seq bigint, removed bigint)
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    t record;
    cut bigint;
    budget bigint := max_rows;
    tail record;
BEGIN
    IF NOT pg_try_advisory_xact_lock(4210881004) THEN
        RETURN;
    END IF;
    FOR t IN
        SELECT tp.topic, tp.head, tp.first_seq, tp.compacted, r.max_age, r.max_count,
               r.compact
        FROM changefeed.topics tp
        CROSS JOIN LATERAL changefeed.retention_for(tp.topic) r
        WHERE tp.first_seq <= tp.head AND r.pattern IS NOT NULL
        ORDER BY tp.topic
    LOOP
        EXIT WHEN budget <= 0;
        -- With neither bound, a compacting policy compacts everything.
        cut := CASE WHEN t.compact AND t.max_count IS NULL AND t.max_age IS NULL
                    THEN t.head + 1 ELSE t.first_seq END;
        IF t.max_count IS NOT NULL THEN
            cut := greatest(cut, t.head - t.max_count + 1);
        END IF;
        IF t.max_age IS NOT NULL THEN
            -- time grows with seq, so the expired events are a prefix; look at most one
            -- budget ahead.
            cut := greatest(cut, (
                SELECT coalesce(max(e.seq) + 1, t.first_seq)
                FROM (SELECT e.seq, e.time FROM changefeed.events e
                      WHERE e.topic = t.topic AND e.seq >= t.first_seq
                      ORDER BY e.seq LIMIT budget) e
                WHERE e.time < at - t.max_age));
        END IF;
        cut := least(cut, t.first_seq + budget);
        CONTINUE WHEN cut <= t.first_seq;

        SELECT e.hash, e.position INTO tail
        FROM changefeed.events e WHERE e.topic = t.topic AND e.seq = cut - 1;
        IF t.compact THEN
            PERFORM changefeed.compact_range(t.topic, t.first_seq, cut);
        ELSE
            -- Below the mark too: a snapshot left by an earlier compacting policy.
            DELETE FROM changefeed.events e WHERE e.topic = t.topic AND e.seq < cut;
            DELETE FROM changefeed.compaction_keys k WHERE k.topic = t.topic;
            UPDATE changefeed.consumer_topics ct
            SET skipped = ct.skipped + (cut - 1 - ct.acked_seq), skipped_upto = cut - 1,
                acked_seq = cut - 1
            WHERE ct.topic = t.topic AND ct.acked_seq < cut - 1;
        END IF;
        UPDATE changefeed.topics tp
        SET first_seq = cut, tail_hash = tail.hash, tail_position = tail.position,
            compacted = t.compact
        WHERE tp.topic = t.topic;

        budget := budget - (cut - t.first_seq);
        topic := t.topic;
        first_seq := cut;
        removed := cut - t.first_seq;
        RETURN NEXT;
    END LOOP;
END
$function$;
