-- changefeed at head, as PostgreSQL 15 prints it (see migrations/versions)
CREATE OR REPLACE AGGREGATE changefeed.chain_hash(content bytea, seed bytea) (
    SFUNC = changefeed.chain_step,
    STYPE = bytea
);
