"""The SQL role model under attack.

Each trick is played by a least-privileged role (a producer, the writer of a captured
table, the owner of a captured table, a role that may create in ``public``) against a real
PostgreSQL whose changefeed schema belongs to a superuser, as in the embedded default.
Each is played against revision 0007 too, where it worked: that shows the test catches
what it is about, and keeps doing so.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from changefeed.ops import migrate
from tests.support import (
    Service,
    create_database,
    new_topic,
    subscribe,
    url_as,
    wait_for,
)


@dataclass(frozen=True)
class Roles:
    owner: str  # owns the changefeed schema: the superuser that migrated it
    producer: str  # holds changefeed_producer, nothing else
    writer: str  # may insert into one captured table
    table_owner: str  # owns a schema of its own, with a captured table in it


@pytest.fixture(scope="module")
async def roles(admin_url: str) -> Roles:
    suffix = uuid.uuid4().hex[:8]
    found = Roles("", f"mallory_{suffix}", f"walt_{suffix}", f"olive_{suffix}")
    admin = await asyncpg.connect(admin_url)
    try:
        for role in (found.producer, found.writer, found.table_owner):
            await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
        await admin.execute(f"GRANT changefeed_producer TO {found.producer}")
        owner = await admin.fetchval("SELECT current_user")
    finally:
        await admin.close()
    return Roles(owner, found.producer, found.writer, found.table_owner)


@pytest.fixture(scope="module")
async def old_database(admin_url: str) -> str:
    """A database at revision 0007, before this hardening."""
    url = await create_database(admin_url)
    await asyncio.to_thread(migrate.upgrade, url, revision="0007")
    return url


@pytest.fixture(params=["0007", "head"])
def target(request: pytest.FixtureRequest, old_database: str, module_database: str) -> tuple:  # type: ignore[type-arg]
    """(revision, database URL): each trick against the old schema and the current one."""
    return request.param, old_database if request.param == "0007" else module_database


@pytest.fixture
async def admin(target: tuple) -> AsyncIterator[asyncpg.Connection]:  # type: ignore[type-arg]
    conn = await asyncpg.connect(target[1])
    try:
        yield conn
    finally:
        await conn.close()


async def _as(url: str, role: str) -> asyncpg.Connection:
    return await asyncpg.connect(url_as(url, role))


# A temporary type named `jsonb` whose check runs the caller's function, which notes whose
# rights it runs with. PostgreSQL searches pg_temp first for types when a search path does
# not name it, so unpinned code would use it in place of pg_catalog.jsonb.
PLANT_TEMP_JSONB = """
CREATE TEMP TABLE loot (who text);
CREATE FUNCTION pg_temp.steal(v pg_catalog.jsonb) RETURNS boolean
LANGUAGE sql AS $$ INSERT INTO pg_temp.loot SELECT current_user RETURNING true $$;
CREATE DOMAIN pg_temp.jsonb AS pg_catalog.jsonb CHECK (pg_temp.steal(VALUE));
"""


async def _loot(conn: asyncpg.Connection, table: str = "pg_temp.loot") -> set[str]:
    return {row[0] for row in await conn.fetch(f"SELECT who FROM {table}")}


async def test_a_producer_runs_nothing_as_the_owner_through_a_temporary_type(
    target: tuple,  # type: ignore[type-arg]
    roles: Roles,
    admin: asyncpg.Connection,
) -> None:
    revision, url = target
    topic = new_topic("pgtemp")
    producer = await _as(url, roles.producer)
    try:
        await producer.execute(PLANT_TEMP_JSONB)
        await producer.execute("SELECT changefeed.publish($1, 'x', NULL::pg_catalog.jsonb)", topic)
        who = await _loot(producer)
    finally:
        await producer.close()
    if revision == "0007":
        assert roles.owner in who  # the trick ran code as the schema's owner
        return
    assert roles.owner not in who, who
    # The producer still publishes.
    stored = await admin.fetchval(
        "SELECT count(*) FROM changefeed.inbox WHERE topic = $1", topic
    ) + await admin.fetchval("SELECT count(*) FROM changefeed.events WHERE topic = $1", topic)
    assert stored == 1


async def _captured_table(admin: asyncpg.Connection, writer: str) -> tuple[str, str]:
    table, topic = f"public.cap_{uuid.uuid4().hex[:8]}", new_topic("cap")
    await admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    await admin.fetchval("SELECT changefeed.capture($1::regclass, $2)", table, topic)
    await admin.execute(f"GRANT INSERT, UPDATE ON {table} TO {writer}")
    return table, topic


async def _changes(admin: asyncpg.Connection, topic: str) -> list[dict[str, object]]:
    """A topic's captured changes, sequenced or still in the inbox, in order."""
    rows = await admin.fetch(
        "SELECT data::text FROM (SELECT 0 AS k, seq AS n, data FROM changefeed.events "
        "WHERE topic = $1 UNION ALL SELECT 1, id, data FROM changefeed.inbox WHERE topic = $1)"
        " AS c ORDER BY k, n",
        topic,
    )
    return [json.loads(row[0]) for row in rows]


async def test_a_writer_of_a_captured_table_runs_nothing_as_the_owner(
    target: tuple,  # type: ignore[type-arg]
    roles: Roles,
    admin: asyncpg.Connection,
) -> None:
    revision, url = target
    table, topic = await _captured_table(admin, roles.writer)
    writer = await _as(url, roles.writer)
    try:
        await writer.execute(PLANT_TEMP_JSONB)
        await writer.execute(f"INSERT INTO {table} VALUES (1, 'one')")
        who = await _loot(writer)
    finally:
        await writer.close()
    if revision == "0007":
        assert roles.owner in who
        return
    assert roles.owner not in who, who
    # A writer with no rights on changefeed's schema has its change captured.
    assert [c["new"] for c in await _changes(admin, topic)] == [{"id": 1, "v": "one"}]


async def test_a_table_owners_cast_runs_with_the_writers_rights(
    target: tuple,  # type: ignore[type-arg]
    roles: Roles,
    admin: asyncpg.Connection,
) -> None:
    revision, url = target
    schema = f"olive_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {roles.table_owner}")
    owner = await _as(url, roles.table_owner)
    try:
        # The row serialiser (to_jsonb) uses a cast to json when the column's type has one.
        await owner.execute(
            f"""
            CREATE TYPE {schema}.mood AS ENUM ('calm');
            CREATE TABLE {schema}.diary (id int PRIMARY KEY, mood {schema}.mood);
            CREATE TABLE {schema}.loot (who text);
            GRANT USAGE ON SCHEMA {schema} TO PUBLIC;
            GRANT INSERT ON {schema}.loot TO PUBLIC;
            CREATE FUNCTION {schema}.mood_json(m {schema}.mood) RETURNS json LANGUAGE sql
            AS $$ INSERT INTO {schema}.loot SELECT current_user
                  RETURNING pg_catalog.to_json(m::pg_catalog.text) $$;
            CREATE CAST ({schema}.mood AS json) WITH FUNCTION {schema}.mood_json({schema}.mood);
            """
        )
        topic = new_topic("diary")
        await admin.fetchval(
            "SELECT changefeed.capture($1::regclass, $2)", f"{schema}.diary", topic
        )
        await owner.execute(f"INSERT INTO {schema}.diary VALUES (1, 'calm')")
        who = await _loot(owner, f"{schema}.loot")
    finally:
        await owner.close()
    if revision == "0007":
        assert roles.owner in who
        return
    assert who == {roles.table_owner}
    assert [c["new"] for c in await _changes(admin, topic)] == [{"id": 1, "mood": "calm"}]


async def test_the_size_limit_is_not_the_callers_to_set(
    target: tuple,  # type: ignore[type-arg]
    roles: Roles,
) -> None:
    revision, url = target
    producer = await _as(url, roles.producer)
    try:
        await producer.execute("SET changefeed.max_event_bytes = '2000000000'")
        publish = producer.execute(
            "SELECT changefeed.publish($1, 'x', to_jsonb(repeat('x', 200000)))", new_topic()
        )
        if revision == "0007":
            await publish  # stored, four times over the 64 KiB limit
            return
        with pytest.raises(asyncpg.ProgramLimitExceededError, match="over the limit of 65536"):
            await publish
    finally:
        await producer.close()


async def test_capture_events_come_only_from_real_changes(
    roles: Roles, module_database: str
) -> None:
    admin = await asyncpg.connect(module_database)
    try:
        table, topic = await _captured_table(admin, roles.writer)
        producer = await _as(module_database, roles.producer)
        try:
            # Another role's trigger cannot use the function that writes capture events.
            await producer.execute("CREATE TEMP TABLE mine (id int PRIMARY KEY)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await producer.execute(
                    "CREATE TRIGGER forge AFTER INSERT ON pg_temp.mine FOR EACH ROW "
                    f"EXECUTE FUNCTION changefeed.capture_publish('{topic}')"
                )
        finally:
            await producer.close()
        writer = await _as(module_database, roles.writer)
        try:
            # The hand-over between the two capture triggers is a setting any session may
            # write: what a writer puts there beforehand is never what gets published.
            forged = [{"table": table, "op": "insert", "key": {"id": 666}, "new": {"id": 666}}]
            await writer.execute(
                "SELECT set_config('changefeed.capture', $1, false)", json.dumps(forged)
            )
            await writer.execute(f"INSERT INTO {table} VALUES (2, 'two')")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await writer.execute(
                    "INSERT INTO changefeed.inbox (topic, type, data) VALUES ($1, 'x', '1')",
                    topic,
                )
        finally:
            await writer.close()
        assert [c["key"] for c in await _changes(admin, topic)] == [{"id": 2}]
        # A row whose first trigger did not run fails loudly rather than publish stale data.
        await admin.execute(f"ALTER TABLE {table} DISABLE TRIGGER changefeed_capture")
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="not serialised"):
            await admin.execute(f"INSERT INTO {table} VALUES (3, 'three')")
    finally:
        await admin.close()


async def test_a_role_with_the_trigger_privilege_cannot_forge_events(
    roles: Roles, module_database: str
) -> None:
    """TRIGGER lets a role add triggers to a table it does not own. One that sorted
    between the two capture triggers could rewrite the hand-over, and publish a row that
    was never written, with columns the role may not even write."""
    admin = await asyncpg.connect(module_database)
    try:
        table, topic = await _captured_table(admin, roles.writer)
        schema = f"walt_{uuid.uuid4().hex[:8]}"
        await admin.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {roles.writer}")
        await admin.execute(f"GRANT TRIGGER ON {table} TO {roles.writer}")
        forged = [{"table": table, "op": "insert", "key": {"id": 7}, "new": {"id": 7, "v": "x"}}]
        writer = await _as(module_database, roles.writer)
        try:
            await writer.execute(
                f"""
                CREATE FUNCTION {schema}.forge() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    PERFORM set_config('changefeed.capture', '{json.dumps(forged)}', true);
                    RETURN NULL;
                END $$;
                """
            )
            # Every name that sorts after changefeed_capture, close to it.
            for name in ("changefeed_capture_", "changefeed_capture_m", "changefeed_capturf"):
                await writer.execute(
                    f'CREATE TRIGGER "{name}" AFTER INSERT ON {table} FOR EACH ROW '
                    f"EXECUTE FUNCTION {schema}.forge()"
                )
            await writer.execute(f"INSERT INTO {table} VALUES (8, 'mine')")
        finally:
            await writer.close()
        assert [c["key"] for c in await _changes(admin, topic)] == [{"id": 8}]
    finally:
        await admin.close()


async def test_table_names_in_events_are_quoted(module_database: str) -> None:
    """`x.a`.`b` and `x`.`a.b` are two tables; unquoted, both were `x.a.b`, and events of
    one could pass for the other's (compaction keys on the name)."""
    admin = await asyncpg.connect(module_database)
    try:
        suffix = uuid.uuid4().hex[:6]
        topic = new_topic("quoted")
        await admin.execute(f'CREATE SCHEMA "x{suffix}.a"; CREATE SCHEMA "x{suffix}"')
        for table in (f'"x{suffix}.a".b', f'"x{suffix}"."a.b"'):
            await admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
            await admin.fetchval("SELECT changefeed.capture($1::regclass, $2)", table, topic)
            await admin.execute(f"INSERT INTO {table} VALUES (1)")
        names = [c["table"] for c in await _changes(admin, topic)]
        assert names == [f'"x{suffix}.a".b', f'x{suffix}."a.b"']
    finally:
        await admin.close()


async def test_functions_planted_in_public_never_run_in_the_services_sessions(
    roles: Roles, module_database: str, service: Service
) -> None:
    """Before PostgreSQL 15 every role may create in `public`; an exact-signature function
    there out-matches a built-in that needs a cast (convert_to takes a `name`), in every
    session whose search path includes `public`."""
    loot = f"public.loot_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(module_database)
    try:
        await admin.execute(f"GRANT CREATE ON SCHEMA public TO {roles.producer}")
        planter = await _as(module_database, roles.producer)
        try:
            await planter.execute(
                f"""
                CREATE TABLE {loot} (who text);
                GRANT INSERT ON {loot} TO PUBLIC;
                CREATE OR REPLACE FUNCTION public.convert_to(t text, e text) RETURNS bytea
                LANGUAGE sql AS $$ INSERT INTO {loot} SELECT current_user
                                   RETURNING pg_catalog.convert_to(t, e::name) $$;
                """
            )
        finally:
            await planter.close()
        # A session on the default search path runs it (as the owner, here).
        await admin.fetchval("SELECT convert_to('x', 'UTF8')")
        assert await _loot(admin, loot) == {roles.owner}
        await admin.execute(f"TRUNCATE {loot}")

        # The service's sessions do not: publish, sequence (the hash chain converts each
        # event's content), stream a catch-up, read a page, export, lease.
        topic = new_topic("planted")
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
            for n in range(3):
                response = await http.post(f"/feeds/{topic}", json={"data": n})
                assert response.status_code == 202
            async with subscribe(http, topic, after=0) as stream:
                assert [e.data for e in await stream.take(3)] == ["0", "1", "2"]
            page = await http.get(f"/feeds/{topic}/events")
            assert len(page.json()["events"]) == 3
            export = await http.get(
                f"/feeds/{topic}/events", headers={"accept": "application/x-ndjson"}
            )
            assert len(export.text.splitlines()) == 3
            name = f"c-{topic}"
            assert (await http.put(f"/consumers/{name}", json={"topics": [topic]})).is_success

            async def leased() -> bool:
                batch = (await http.get(f"/consumers/{name}/events")).json()
                return len(batch["events"]) == 3

            await wait_for(leased, timeout=30)
        assert await _loot(admin, loot) == set()
    finally:
        await admin.execute("DROP FUNCTION IF EXISTS public.convert_to(text, text)")
        await admin.execute(f"REVOKE CREATE ON SCHEMA public FROM {roles.producer}")
        await admin.close()


# Functions whose bodies qualify every name instead of pinning a search path: a SET clause
# costs as much as their work, and they run for every inbox row.
QUALIFIED = {"event_ok"}


async def test_every_function_resolves_names_only_in_trusted_schemas(
    db: asyncpg.Connection,
) -> None:
    rows = await db.fetch(
        """
        SELECT p.proname, p.prosecdef, p.proconfig, p.prosqlbody IS NOT NULL AS atomic,
               p.prokind::text AS prokind, p.prosrc
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'changefeed'
        """
    )
    assert len(rows) >= 20
    for row in rows:
        if row["prokind"] == "a":
            continue  # an aggregate: its transition function is checked itself
        if row["prokind"] == "p":
            # A procedure that commits can have neither SET clauses nor the owner's rights:
            # it runs as its caller, and sets the path itself in each transaction.
            assert not row["prosecdef"] and not row["proconfig"], row["proname"]
            assert "set_config('search_path', trusted, true)" in row["prosrc"], row["proname"]
            continue
        config = [c for c in row["proconfig"] or [] if c.startswith("search_path=")]
        pinned = bool(config) and config[0].replace(" ", "").endswith(",pg_temp")
        assert pinned or row["atomic"] or row["proname"] in QUALIFIED, row["proname"]
        if row["prosecdef"]:
            assert pinned, row["proname"]  # owner code: pg_temp last, always
    # Only publish() is open to producers; nothing to PUBLIC.
    executable = await db.fetch(
        """
        SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'changefeed' AND has_function_privilege('changefeed_producer', p.oid,
                                                                  'EXECUTE')
        """
    )
    assert [r[0] for r in executable] == ["publish"]
