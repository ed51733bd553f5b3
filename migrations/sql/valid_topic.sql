-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.valid_topic(name text)
 RETURNS boolean
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
RETURN (((length(name) >= 1) AND (length(name) <= 200)) AND (name ~ '^[A-Za-z0-9._:-]+$'::text));
