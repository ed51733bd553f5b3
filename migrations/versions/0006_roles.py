"""Roles: a producer role that may publish and nothing else; no function open to PUBLIC.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Frozen with this revision (a migration never imports the code it migrates for).
PRODUCER_ROLE = "changefeed_producer"
SCHEMA = "changefeed"

# Functions that run with their owner's rights (the role that migrated, which owns the
# schema), so that callers need no rights on the tables: publish() for producers, and the
# capture triggers for the application roles whose writes they record. A fixed search_path
# keeps callers from substituting objects.
DEFINER = [
    "publish(text, text, jsonb, text)",
    "capture_row()",
    "capture_truncate()",
]

# Roles are shared by the whole cluster: create it once, and only if this role may (without
# CREATEROLE the migration still secures the functions; grant publish() to roles yourself).
PRODUCER = f"""
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{PRODUCER_ROLE}') THEN
        IF (SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            CREATE ROLE {PRODUCER_ROLE} NOLOGIN;
        ELSE
            RAISE NOTICE 'changefeed: cannot create role {PRODUCER_ROLE} (no CREATEROLE)';
            RETURN;
        END IF;
    END IF;
    GRANT USAGE ON SCHEMA {SCHEMA} TO {PRODUCER_ROLE};
    GRANT EXECUTE ON FUNCTION {SCHEMA}.publish(text, text, jsonb, text) TO {PRODUCER_ROLE};
END
$do$;
"""


def upgrade() -> None:
    for function in DEFINER:
        op.execute(
            f"ALTER FUNCTION {SCHEMA}.{function} SECURITY DEFINER "
            f"SET search_path = pg_catalog, {SCHEMA}"
        )
    # PostgreSQL lets PUBLIC execute every new function: here only the owner (the service)
    # and the roles granted below may.
    op.execute(f"REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {SCHEMA} FROM PUBLIC")
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {SCHEMA} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC"
    )
    op.execute(PRODUCER)


def downgrade() -> None:
    op.execute(
        f"""
        DO $do$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{PRODUCER_ROLE}') THEN
                REVOKE EXECUTE ON FUNCTION {SCHEMA}.publish(text, text, jsonb, text)
                    FROM {PRODUCER_ROLE};
                REVOKE USAGE ON SCHEMA {SCHEMA} FROM {PRODUCER_ROLE};
            END IF;
        END
        $do$;
        """
    )
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {SCHEMA} GRANT EXECUTE ON FUNCTIONS TO PUBLIC")
    op.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {SCHEMA} TO PUBLIC")
    for function in DEFINER:
        op.execute(f"ALTER FUNCTION {SCHEMA}.{function} SECURITY INVOKER RESET search_path")
