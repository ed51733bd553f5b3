-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE PROCEDURE changefeed.backfill(IN target regclass, IN row_filter text DEFAULT NULL::text, IN chunk_rows integer DEFAULT 1000, INOUT published bigint DEFAULT NULL::bigint)
 LANGUAGE plpgsql
AS $procedure$
DECLARE
    -- A procedure that commits may have no SET clause: the search path (and the digits of
    -- floats, which travel as text) are set for each transaction below, and names outside
    -- pg_catalog are qualified.
    trusted CONSTANT text := 'pg_catalog, pg_temp';
    token CONSTANT uuid := pg_catalog.gen_random_uuid();
    captured record;
    run bigint;
    key_types text[];
    keys text;
    after text[];
    upper text[];
    lower_bound text;
    find_upper text;
    read_chunk text;
    chunk_published bigint;
    attempt integer;
    failed_state text;
    failed_message text;
BEGIN
    published := 0;
    -- Nothing is done before this: inside a transaction block PostgreSQL refuses it here
    -- ("invalid transaction termination"), before a single event is published.
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', trusted, true);
    -- The ordering argument needs each statement to see what committed before it (READ
    -- COMMITTED re-reads a row it waited for); a snapshot per transaction would publish
    -- rows as they were before the writer the chunk waited for.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'changefeed.backfill runs in READ COMMITTED, not %',
            current_setting('transaction_isolation')
            USING ERRCODE = '25000',
                  HINT = 'SET default_transaction_isolation = ''read committed'' first.';
    END IF;
    IF chunk_rows IS NULL OR chunk_rows < 1 THEN
        RAISE EXCEPTION 'changefeed.backfill: chunk_rows must be at least 1'
            USING ERRCODE = '22023';
    END IF;
    SELECT c.table_name, c.topic, c.key_columns, c.excluded_columns,
           c.row_filter AS capture_filter
    INTO captured FROM changefeed.captures c
    WHERE c.table_name = changefeed.qualified_name(target);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'changefeed.backfill: % is not captured', target
            USING ERRCODE = '55000',
                  HINT = 'Declare it first: SELECT changefeed.capture(...).';
    END IF;
    SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.n) INTO key_types
    FROM unnest(captured.key_columns) WITH ORDINALITY AS k(name, n)
    JOIN pg_attribute a ON a.attrelid = target AND a.attname = k.name AND NOT a.attisdropped;
    IF cardinality(key_types) IS DISTINCT FROM cardinality(captured.key_columns) THEN
        RAISE EXCEPTION 'changefeed.backfill: a key column of % is gone', target
            USING ERRCODE = '55000', HINT = 'Declare the capture again.';
    END IF;
    PERFORM changefeed.check_row_filter(target, row_filter, 'changefeed.backfill');
    keys := (SELECT string_agg(format('r.%I', k), ', ') FROM unnest(captured.key_columns) k);
    -- Key values travel as text, cast back to the columns' own types.
    lower_bound := format('(%s) > (%s)', keys,
        (SELECT string_agg(format('($1[%s])::%s', n, t), ', ')
         FROM unnest(key_types) WITH ORDINALITY AS x(t, n)));
    find_upper := format(
        'SELECT ARRAY[%s] FROM %s r WHERE $1 IS NULL OR %s ORDER BY %s OFFSET $2 - 1 LIMIT 1',
        (SELECT string_agg(format('r.%I::text', k), ', ') FROM unnest(captured.key_columns) k),
        target, lower_bound, keys);
    -- The filters are evaluated by row_matches(), each as its own statement, on the newest
    -- version of each row (PostgreSQL evaluates the WHERE again on a row it waited for).
    read_chunk := format(
        'WITH locked AS MATERIALIZED ('
        '  SELECT r.* FROM %1$s r'
        '  WHERE ($1 IS NULL OR %2$s) AND ($2 IS NULL OR (%3$s) <= (%4$s))'
        '    AND ($5::text IS NULL OR changefeed.row_matches(r.*, $5))'
        '    AND ($6::text IS NULL OR changefeed.row_matches(r.*, $6))'
        '  ORDER BY %3$s FOR SHARE OF r) '
        'SELECT changefeed.backfill_publish($7, $8, coalesce(array_agg(jsonb_build_object('
        '  ''table'', $3::text, ''op'', ''read'', ''key'', jsonb_build_object(%5$s),'
        '  ''new'', to_jsonb(r.*) - $4::text[]) ORDER BY %3$s), ''{}'')) FROM locked r',
        target, lower_bound, keys,
        (SELECT string_agg(format('($2[%s])::%s', n, t), ', ')
         FROM unnest(key_types) WITH ORDINALITY AS x(t, n)),
        (SELECT string_agg(format('%L, r.%I', k, k), ', ') FROM unnest(captured.key_columns) k));
    run := changefeed.backfill_begin(target, row_filter,
        (SELECT greatest(c.reltuples, 0)::bigint FROM pg_class c WHERE c.oid = target), token);
    -- Held until the run ends, or its session does: operators tell a run that was
    -- interrupted by its absence (changefeed capture --list).
    PERFORM pg_catalog.pg_advisory_lock(1667588710, (run % 2147483647)::integer);
    COMMIT;
    LOOP
        PERFORM pg_catalog.set_config('search_path', trusted, true);
        PERFORM pg_catalog.set_config('extra_float_digits', '3', true);
        attempt := 0;
        LOOP
            BEGIN
                IF attempt > 0 THEN
                    PERFORM pg_catalog.pg_sleep(pg_catalog.random() * 0.05 * 2 ^ attempt);
                END IF;
                -- The chunk's upper key, the chunk_rows-th after ``after``: fixed before
                -- anything is locked; then its rows, read FOR SHARE and published.
                EXECUTE find_upper INTO upper USING after, chunk_rows;
                IF upper IS NOT NULL AND upper = after THEN
                    RAISE EXCEPTION 'changefeed.backfill: the key % of % does not survive '
                                    'its text form', upper, target USING ERRCODE = '22000';
                END IF;
                EXECUTE read_chunk INTO chunk_published
                    USING after, upper, captured.table_name, captured.excluded_columns,
                          captured.capture_filter, row_filter, run, token;
                -- Declaring the capture again (say, to exclude a column) drops its triggers,
                -- which waits for this chunk's lock on the table: a declaration that is not
                -- visible here comes after this chunk, so the chunk used the capture as it
                -- is; one that is visible fails the run rather than publish what the
                -- capture no longer would. So does a table renamed or dropped under it.
                IF changefeed.qualified_name(target) IS DISTINCT FROM captured.table_name
                   OR NOT EXISTS (
                    SELECT FROM changefeed.captures c
                    WHERE c.table_name = captured.table_name AND c.topic = captured.topic
                      AND c.key_columns = captured.key_columns
                      AND c.excluded_columns = captured.excluded_columns
                      AND c.row_filter IS NOT DISTINCT FROM captured.capture_filter) THEN
                    RAISE EXCEPTION 'changefeed.backfill: the capture of % was declared again '
                                    'or removed while the backfill ran', target
                        USING ERRCODE = '55000', HINT = 'Run the backfill again.';
                END IF;
                PERFORM changefeed.backfill_report(run, token, upper, chunk_published,
                    CASE WHEN upper IS NULL THEN 'done' ELSE 'running' END, NULL);
                EXIT;
            EXCEPTION
                WHEN deadlock_detected OR serialization_failure THEN
                    -- A writer locked rows of the chunk in another order and PostgreSQL
                    -- aborted the chunk to break the deadlock: it published nothing, so
                    -- reading the same range again is exact.
                    attempt := attempt + 1;
                    IF attempt >= 10 THEN
                        failed_state := SQLSTATE;
                        failed_message := SQLERRM;
                        EXIT;
                    END IF;
                WHEN query_canceled OR OTHERS THEN
                    failed_state := SQLSTATE;
                    failed_message := SQLERRM;
                    EXIT;
            END;
        END LOOP;
        IF failed_state IS NOT NULL THEN
            PERFORM changefeed.backfill_report(run, token, NULL, 0,
                CASE failed_state WHEN '57014' THEN 'cancelled' ELSE 'failed' END,
                failed_message);
            COMMIT;
            PERFORM pg_catalog.pg_advisory_unlock(1667588710, (run % 2147483647)::integer);
            RAISE EXCEPTION 'changefeed.backfill of %: %', target, failed_message
                USING ERRCODE = failed_state;
        END IF;
        published := published + chunk_published;
        COMMIT;
        EXIT WHEN upper IS NULL;
        after := upper;
    END LOOP;
    PERFORM pg_catalog.pg_advisory_unlock(1667588710, (run % 2147483647)::integer);
END
$procedure$;
