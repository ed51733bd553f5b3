"""The commands that work on the database: ``serve``, ``migrate``, ``capture``, ``verify``,
``retention``, ``trim``, ``status`` and ``psql``. Without CHANGEFEED_DATABASE_URL they use
the embedded cluster in CHANGEFEED_DATA_DIR, whether ``serve`` runs or not (see
``embedded``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .. import __version__
from ..settings import Settings
from . import embedded
from .commands import FAILED, UNREACHABLE, USAGE, CommandError, Progress, show


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """CHANGEFEED_DATABASE_URL, or the embedded cluster's URL (started for the command's
    duration if nothing runs it)."""
    if settings.database_url:
        yield settings.database_url
        return
    from .cluster import ClusterError

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(embedded.for_command(settings))
        except (ClusterError, embedded.DataDirInUse, OSError) as exc:
            message = f"the embedded database in {settings.data_dir}: {exc}"
            raise CommandError(message, UNREACHABLE) from None
        yield url


def run(work: Awaitable[Any]) -> Any:
    """Runs ``work``; a database that cannot be reached is exit 3, a refusal exit 1."""
    import asyncpg

    async def awaited() -> Any:
        return await work

    try:
        return asyncio.run(awaited())
    except (OSError, asyncpg.CannotConnectNowError, asyncpg.ConnectionFailureError) as exc:
        raise CommandError(f"cannot reach the database: {exc}", UNREACHABLE) from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def on_connection(settings: Settings, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Runs ``work`` on a connection to the database."""
    from ..core import database as db

    async def connected(url: str) -> Any:
        conn = await db.connect(url, "cli")
        try:
            return await work(conn)
        finally:
            await conn.close()

    with database(settings) as url:
        return run(connected(url))


def serve(settings: Settings, args: argparse.Namespace) -> int:
    from ..core.auth import Authenticator
    from . import server
    from .cluster import ClusterError
    from .migrate import SchemaNotReady

    if settings.auth is None:
        if settings.database_url:
            raise CommandError(
                "choose authentication for this database: CHANGEFEED_AUTH=jwt with a key "
                "(CHANGEFEED_JWT_SECRET, _PUBLIC_KEY_FILE or _JWKS_FILE), or "
                "CHANGEFEED_AUTH=none to let anyone who reaches the service read and publish "
                "every topic",
                USAGE,
            )
        if settings.host not in ("127.0.0.1", "localhost", "::1"):
            raise CommandError(
                f"serving on {settings.host}, reachable from other machines: choose "
                "authentication (CHANGEFEED_AUTH=jwt with a key, or CHANGEFEED_AUTH=none to "
                "let anyone who reaches it read and publish every topic)",
                USAGE,
            )
        # The embedded development server on this machine only: open, and the log says so.
        settings = settings.model_copy(update={"auth": "none"})
    try:
        Authenticator(settings)
    except (ValueError, OSError) as exc:
        raise CommandError(f"invalid authentication settings: {exc}", USAGE) from None
    try:
        with server.database(settings, apply_migrations=args.migrate) as url:
            server.preflight(url)
            return 0 if server.serve(settings, url) else FAILED
    except (ClusterError, SchemaNotReady, embedded.DataDirInUse, OSError) as exc:
        raise CommandError(str(exc)) from None
    except Exception as exc:
        # asyncpg errors while connecting or migrating: one readable line, not a traceback.
        raise CommandError(f"{type(exc).__name__}: {exc}") from None


def migrate(settings: Settings, args: argparse.Namespace) -> None:
    from . import migrate as migrations

    with database(settings) as url:
        try:
            migrations.upgrade(url, max_event_bytes=settings.max_event_bytes_if_set)
        except Exception as exc:
            raise CommandError(str(exc)) from None
    revision = migrations.head_revision()
    show(args, f"schema at revision {revision}", {"revision": revision})


def capture(settings: Settings, args: argparse.Namespace) -> None:
    from ..core import capture as cdc

    if args.list:
        found = on_connection(settings, cdc.captures)
        show(
            args,
            "\n".join(_described(c) for c in found) or "no captured tables",
            {"captures": found},
        )
        return
    if args.table is None:
        raise CommandError("name the table to capture (or --list)", USAGE)
    with database(settings) as url:
        topic = run(cdc.capture(url, args.table, args.topic, args.exclude, args.where))
        said = f"changes of {args.table} are published on topic {topic}"
        if not args.backfill:
            show(args, said, {"topic": topic})
            return
        print(said, file=sys.stderr)
        count = _backfill(url, args.table, None, 1000)
    show(args, f"{count} rows published as read events on {topic}", {"topic": topic, "read": count})


def _printable(text: str) -> str:
    """Text from the database as one line, control characters escaped (an error message
    or a filter could hold a terminal's escape sequences)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _described(capture: dict[str, Any]) -> str:
    """One line per captured table, with its latest backfill."""
    line = f"{capture['table']} -> {capture['topic']} (key {', '.join(capture['key'])}"
    if capture["excluded"]:
        line += f"; excluded {', '.join(capture['excluded'])}"
    if capture["where"] is not None:
        line += f"; where {_printable(capture['where'])}"
    line += ")"
    latest = capture["backfill"]
    if latest is not None:
        rows = f"{latest['rows']:,}"
        if latest["state"] == "running" and latest["estimate"]:
            rows += f" of about {latest['estimate']:,}"
        line += f"\n  backfill {latest['state']}: {rows} rows"
        if latest["rate"]:
            line += f", {latest['rate']:,}/s"
        line += f", started {latest['started']}"
        if latest["error"]:
            line += f": {_printable(latest['error'])}"
    return line


def backfill(settings: Settings, args: argparse.Namespace) -> None:
    if args.chunk_rows < 1:
        raise CommandError("--chunk-rows must be at least 1", USAGE)
    with database(settings) as url:
        count = _backfill(url, args.table, args.where, args.chunk_rows)
    show(args, f"{count} rows published as read events", {"read": count})


def _backfill(url: str, table: str, where: str | None, chunk_rows: int) -> int:
    from ..core import backfill as backfills

    progress = Progress("rows")

    def on_progress(rows: int, estimate: int | None) -> None:
        progress.total = estimate
        progress.add(rows - progress.count)

    try:
        count: int = run(
            backfills.backfill(
                url,
                table,
                where=where,
                chunk_rows=chunk_rows,
                on_progress=on_progress if progress.enabled else None,
            )
        )
    finally:
        progress.done()
    return count


def uncapture(settings: Settings, args: argparse.Namespace) -> None:
    from ..core import capture as cdc

    with database(settings) as url:
        removed = run(cdc.uncapture(url, args.table))
    if not removed:
        raise CommandError(f"{args.table} was not captured")
    show(args, f"{args.table} is no longer captured", {"uncaptured": args.table})


def verify(settings: Settings, args: argparse.Namespace) -> None:
    from ..core import audit

    progress = Progress("topics")
    with database(settings) as url:
        verdict = run(audit.verify(url, list(args.topics), progress.add))
    progress.done()
    lines = [f"{topic}: broken at seq {seq}: {problem}" for topic, seq, problem in verdict.broken]
    lines += [f"{topic}: no such topic" for topic in verdict.missing]
    lines += [
        f"{topic}: checked from seq {first_seq}, its low-water mark"
        for topic, first_seq in sorted(verdict.marks.items())
    ]
    intact = not verdict.broken and not verdict.missing
    if intact:
        lines.append(f"{len(verdict.checked)} topics intact")
    show(
        args,
        "\n".join(lines),
        {
            "intact": intact,
            "checked": verdict.checked,
            "broken": [{"topic": t, "seq": s, "problem": p} for t, s, p in verdict.broken],
            "missing": verdict.missing,
            "checked_from": verdict.marks,
        },
    )
    if not intact:
        raise CommandError("not intact" if verdict.broken else "no such topic")


def retention_set(settings: Settings, args: argparse.Namespace) -> None:
    from ..core import retention

    policy = on_connection(
        settings,
        lambda conn: retention.set_policy(
            conn, args.pattern, args.max_age, args.max_count, args.compact
        ),
    )
    show(args, f"{policy.pattern}: {_describe(policy)}", _policy(policy))


def retention_list(settings: Settings, args: argparse.Namespace) -> None:
    from ..core import retention

    found = on_connection(settings, retention.policies)
    text = "\n".join(f"{p.pattern}: {_describe(p)}" for p in found)
    show(args, text or "no policies: every topic keeps every event", [_policy(p) for p in found])


def retention_clear(settings: Settings, args: argparse.Namespace) -> None:
    from ..core import retention

    if not on_connection(settings, lambda conn: retention.clear_policy(conn, args.pattern)):
        raise CommandError(f"no policy for {args.pattern}")
    show(args, f"cleared {args.pattern}", {"cleared": args.pattern})


def _policy(policy: Any) -> dict[str, Any]:
    return {
        "pattern": policy.pattern,
        "max_age": policy.max_age,
        "max_count": policy.max_count,
        "compact": policy.compact,
    }


def _describe(policy: Any) -> str:
    bounds = []
    if policy.max_age is not None:
        bounds.append(f"events younger than {policy.max_age}")
    if policy.max_count is not None:
        bounds.append(f"the latest {policy.max_count} events")
    if not policy.compact:
        return "keep " + " and ".join(bounds)
    if not bounds:
        return "keep the latest event per key"
    return "keep " + " and ".join(bounds) + ", and before them the latest event per key"


def trim(settings: Settings, args: argparse.Namespace) -> None:
    from ..core import retention

    progress = Progress("events removed")
    removed: dict[str, int] = on_connection(
        settings, lambda conn: retention.trim(conn, settings.retention_batch_rows, progress.add)
    )
    progress.done()
    text = ", ".join(f"{topic}: {n} removed" for topic, n in sorted(removed.items()))
    show(args, text or "nothing to remove", {"removed": removed})


def status(settings: Settings, args: argparse.Namespace) -> None:
    """Where things are and whether they run, without starting anything."""
    import httpx

    from .cluster import Cluster, ClusterError

    found: dict[str, Any] = {
        "version": __version__,
        "url": _without_credentials(settings.url),
        "auth": settings.auth or ("jwt or none: required" if settings.database_url else "none"),
    }
    try:
        found["serving"] = httpx.get(f"{settings.url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        found["serving"] = False
    url: str | None = settings.database_url
    if url:
        found["database"] = _without_password(url)
    else:
        data_dir = settings.data_dir.resolve()
        found["data_dir"] = str(data_dir)
        holder = embedded.holder(data_dir)
        found["serve_pid"] = holder.pid if holder else None
        try:
            cluster = Cluster(data_dir, bin_dir=settings.pg_bin_dir)
            running = (data_dir / "pgdata" / "PG_VERSION").exists() and cluster.is_running()
            if running:
                cluster.ensure()  # adopts its port and socket directory
                url = cluster.url
            found["database"] = url
            found["database_running"] = running
        except ClusterError as exc:
            found["database"] = None
            found["database_error"] = str(exc)
    found["schema_revision"] = _revision(url) if url else None
    lines = [
        f"changefeed {found['version']}",
        f"service:  {settings.url} ({'ready' if found['serving'] else 'not answering'})",
    ]
    if "data_dir" in found:
        serve_pid = found["serve_pid"]
        lines.append(
            f"data dir: {found['data_dir']} ("
            + (f"changefeed serve runs as pid {serve_pid}" if serve_pid else "serve not running")
            + ")"
        )
    database_line = found.get("database") or found.get("database_error") or "not running"
    lines.append(f"database: {database_line}")
    if found["schema_revision"]:
        lines.append(f"schema:   revision {found['schema_revision']}")
    lines.append(f"auth:     {found['auth']}")
    show(args, "\n".join(lines), found)


def _revision(url: str) -> str | None:
    from ..core import database as db
    from .migrate import current_revision

    async def read() -> str | None:
        conn = await db.connect(url, "cli")
        try:
            return await current_revision(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(read())
    except Exception:  # status reports what it can reach; the database line says the rest
        return None


def _without_password(url: str) -> str:
    """What may be shown of a database URL: scheme, user, host, port, database, and the
    socket's host/port parameters; never a password, wherever it was put. A URL that does
    not parse is not shown at all."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(set, not shown: it does not parse as a URL)"
    if not parts.scheme.startswith("postgres"):
        return "(set, not shown: not a postgresql:// URL)"
    user = f"{parts.username}@" if parts.username else ""
    host = (parts.hostname or "") + (f":{port}" if port else "")
    kept = [
        (name, value)
        for name, value in parse_qsl(parts.query)
        if name in ("host", "port", "dbname", "user")
    ]
    return urlunsplit((parts.scheme, user + host, parts.path, urlencode(kept, safe="/"), ""))


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def psql(settings: Settings, args: argparse.Namespace) -> int:
    program = shutil.which("psql")
    if program is None:
        raise CommandError("psql is not installed (Debian: apt install postgresql-client)", USAGE)
    with database(settings) as url:
        # The password goes in the environment, not on the command line, where every local
        # user could read it (ps) for the whole session.
        env = dict(os.environ)
        password = _password(url)
        if password is not None:
            env["PGPASSWORD"] = password
        extra = args.psql_args[1:] if args.psql_args[:1] == ["--"] else args.psql_args
        # Not exec: an embedded cluster started for this command is stopped afterwards.
        shown = _without_password(url) if password is not None else url
        return subprocess.run([program, shown, *extra], env=env, check=False).returncode


def _password(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    from_query = dict(parse_qsl(parts.query)).get("password")
    return unquote(parts.password) if parts.password is not None else from_query
