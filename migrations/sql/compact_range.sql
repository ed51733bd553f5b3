-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.compact_range(target text, lo bigint, hi bigint)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'changefeed', 'pg_temp'
AS $function$
DECLARE
    truncated record;
    keys jsonb[];
    seqs bigint[];
BEGIN
    FOR truncated IN
        SELECT e.data -> 'table' AS tbl, max(e.seq) AS seq
        FROM changefeed.events e
        WHERE e.topic = target AND e.seq >= lo AND e.seq < hi
          AND e.type = 'truncate' AND e.data ->> 'op' = 'truncate'
        GROUP BY 1
    LOOP
        DELETE FROM changefeed.events e
        WHERE e.topic = target AND e.seq < truncated.seq
          AND e.data -> 'table' IS NOT DISTINCT FROM truncated.tbl
          AND (e.data ? 'key' OR e.data ->> 'op' = 'truncate');
        DELETE FROM changefeed.compaction_keys k
        WHERE k.topic = target AND k.key -> 0 IS NOT DISTINCT FROM truncated.tbl;
    END LOOP;

    SELECT array_agg(l.k), array_agg(l.seq) INTO keys, seqs
    FROM (
        SELECT DISTINCT ON (k) k, e.seq
        FROM changefeed.events e,
             LATERAL (SELECT jsonb_build_array(e.data -> 'table', e.data -> 'key') AS k) named
        WHERE e.topic = target AND e.seq >= lo AND e.seq < hi
          AND jsonb_typeof(e.data) = 'object' AND e.data ? 'key'
        ORDER BY k, e.seq DESC
    ) l;
    IF keys IS NULL THEN
        RETURN;
    END IF;
    -- Events kept by earlier rounds for these keys are superseded now.
    DELETE FROM changefeed.events e
    USING changefeed.compaction_keys k
    WHERE k.topic = target AND k.key = ANY (keys) AND e.topic = target AND e.seq = k.seq;
    -- So is every keyed event of this range but the latest of its key.
    DELETE FROM changefeed.events e
    WHERE e.topic = target AND e.seq >= lo AND e.seq < hi
      AND jsonb_typeof(e.data) = 'object' AND e.data ? 'key'
      AND e.seq <> ALL (seqs);
    INSERT INTO changefeed.compaction_keys (topic, key, seq)
    SELECT target, u.k, u.seq FROM unnest(keys, seqs) AS u(k, seq)
    ON CONFLICT (topic, key) DO UPDATE SET seq = excluded.seq;
END
$function$;
