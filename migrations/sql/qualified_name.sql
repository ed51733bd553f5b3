-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE FUNCTION changefeed.qualified_name(target regclass)
 RETURNS text
 LANGUAGE sql
 STABLE
BEGIN ATOMIC
 SELECT format('%I.%I'::text, n.nspname, c.relname) AS format
    FROM (pg_class c
      JOIN pg_namespace n ON ((n.oid = c.relnamespace)))
   WHERE (c.oid = (qualified_name.target)::oid);
END;
