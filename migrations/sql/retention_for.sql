-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.retention_for(target text)
 RETURNS changefeed.retention
 LANGUAGE sql
 STABLE
BEGIN ATOMIC
 SELECT r.pattern,
     r.max_age,
     r.max_count,
     r.compact,
     r.updated_at
    FROM changefeed.retention r
   WHERE ((r.pattern = retention_for.target) OR (retention_for.target ~~ replace(replace(r.pattern, '_'::text, '\_'::text), '*'::text, '%'::text)))
   ORDER BY (r.pattern = retention_for.target) DESC, (length(r.pattern)) DESC, r.pattern
  LIMIT 1;
END;
