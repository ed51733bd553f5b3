-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.event_content(topic text, seq bigint, type text, data jsonb, "time" timestamp with time zone, event_id text)
 RETURNS bytea
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
RETURN convert_to((jsonb_build_array(topic, seq, type, data, to_char(("time" AT TIME ZONE 'UTC'::text), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'::text), event_id))::text, 'UTF8'::name);
