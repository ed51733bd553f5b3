-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.valid_pattern(pattern text)
 RETURNS boolean
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
RETURN (((length(pattern) >= 1) AND (length(pattern) <= 200)) AND (pattern ~ '^[A-Za-z0-9._:*-]+$'::text));
